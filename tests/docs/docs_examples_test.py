#!/usr/bin/python3
"""The docs' examples, tried as written.

Every ```sh and ```python block of README.md, docs/*.md and
examples/*/README.md carries a marker on the line above it, invisible when
rendered:

  <!-- docs-test: run -->           run as written, in a scratch folder that
                                    sees the checkout's build/, tests/,
                                    tools/, client/, deploy/ and examples/,
                                    with 127.0.0.1:50051 meaning a real
                                    moe-up on the demo model that this test
                                    starts, and 127.0.0.1:8000 its router's
                                    REST port (sh: bash -e; python: python3
                                    with client/python on the path)
  <!-- docs-test: flags -->         a synopsis with placeholders: every line
                                    that runs a moe-serve program must name
                                    a subcommand and flags that program's
                                    --help lists
  <!-- docs-test: skip REASON -->   not run here (a container engine, a
                                    cluster, a GPU, the test suite itself);
                                    the reason is printed

A block without a marker fails the test, so a new example is tried or says
why not.

Usage: docs_examples_test.py REPO_ROOT BIN_DIR
"""

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.abspath(sys.argv.pop(1))
BIN = os.path.abspath(sys.argv.pop(1))
MARKER = re.compile(r"^<!-- docs-test: (run|flags|skip)\b\s*(.*?)\s*-->$")
ADDRESS = "127.0.0.1:50051"
REST_ADDRESS = "127.0.0.1:8000"
LINKED = ["tests", "tools", "client", "deploy", "examples"]


def read(path):
    """The file's text, stripped; "" when it does not exist yet."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def documents():
    files = [os.path.join(ROOT, "README.md")]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    files += sorted(glob.glob(os.path.join(ROOT, "examples", "*", "README.md")))
    return files


def blocks():
    """(file, line, language, kind, reason, text) of every sh/python block."""
    found = []
    for path in documents():
        with open(path) as f:
            lines = f.read().split("\n")
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\w*)\s*$", lines[i])
            if not fence:
                i += 1
                continue
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            language = fence.group(1)
            if language in ("sh", "python"):
                marker = MARKER.match(lines[i - 1]) if i > 0 else None
                found.append((os.path.relpath(path, ROOT), i + 1, language,
                              marker.group(1) if marker else None,
                              marker.group(2) if marker else "",
                              "\n".join(lines[i + 1:end])))
            i = end + 1
    return found


def commands(text):
    """The block's command lines: continuations joined, comments cut."""
    out, current = [], ""
    for line in text.split("\n"):
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        code = re.sub(r"(^|\s)#.*$", "", current).strip()
        if code:
            out.append(code)
        current = ""
    return out


class Programs:
    """--help of moe-serve's programs, read once."""

    def __init__(self):
        self.help = {}

    def resolve(self, words):
        """(program key, argv to run --help, the words after it) or None
        for a line that runs no moe-serve program."""
        while words and re.match(r"^\w+=", words[0]):  # VAR=value prefixes
            words = words[1:]
        if not words:
            return None
        first = words[0]
        name = os.path.basename(first)
        if re.match(r"^moe-[a-z-]+$", name):
            return name, [os.path.join(BIN, name)], words[1:]
        if first.endswith("python3") and len(words) > 1 and words[1].endswith(".py"):
            words = words[1:]
            first = words[0]
        if first.endswith(".py"):
            script = os.path.join(ROOT, first)
            return first, ["/usr/bin/python3", script], words[1:]
        return None

    def text(self, key, argv):
        if key not in self.help:
            result = subprocess.run(argv + ["--help"], capture_output=True,
                                    text=True, timeout=60)
            if result.returncode != 0:
                raise AssertionError("%s --help: exit %d\n%s" % (
                    key, result.returncode, result.stdout + result.stderr))
            self.help[key] = result.stdout + result.stderr
        return self.help[key]


class MoeUp:
    """moe-up on the demo model, on 127.0.0.1 with a free port."""

    def __init__(self, folder):
        port_file = os.path.join(folder, "port")
        endpoints = os.path.join(folder, "endpoints")
        self.log_path = os.path.join(folder, "moe-up.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "moe-up"), "--port=0", "--port_file=" + port_file,
             "--http_port=0", "--endpoints_file=" + endpoints],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while not read(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError("moe-up did not start:\n" + read(self.log_path))
            time.sleep(0.1)
        self.target = "127.0.0.1:" + read(port_file)
        self.rest = dict(line.split() for line in read(endpoints).splitlines())["router_http"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.log.close()


class DocsExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.blocks = blocks()
        cls.programs = Programs()

    def test_every_block_is_marked(self):
        unmarked = ["%s:%d (```%s)" % (f, line, lang)
                    for f, line, lang, kind, _, _ in self.blocks if kind is None]
        self.assertEqual(unmarked, [], "blocks without a <!-- docs-test: ... --> "
                         "marker on the line above")
        for f, line, _, kind, reason, _ in self.blocks:
            if kind == "skip":
                self.assertTrue(reason, "%s:%d: skip needs a reason" % (f, line))
                print("not run: %s:%d: %s" % (f, line, reason))
        self.assertGreater(len(self.blocks), 20)

    def test_synopses_name_real_subcommands_and_flags(self):
        checked = 0
        for f, line, _, kind, _, text in self.blocks:
            if kind != "flags":
                continue
            in_block = 0
            for command in commands(text):
                try:
                    words = shlex.split(command)
                except ValueError:  # an unbalanced quote in a synopsis
                    words = command.split()
                found = self.programs.resolve(words)
                if not found:
                    continue
                key, argv, rest = found
                help_text = self.programs.text(key, argv)
                where = "%s:%d: %s" % (f, line, command)
                if rest and re.match(r"^[a-z][a-z-]+$", rest[0]):
                    self.assertIn("%s %s" % (os.path.basename(key), rest[0]),
                                  help_text, where + ": no such subcommand")
                absl = not key.endswith(".py")
                listed = set(re.findall(r"^\s+--(\w+)", help_text, re.M)) if absl \
                    else set(re.findall(r"--([\w-]+)", help_text))
                for flag in re.findall(r"(?<![\w-])--([A-Za-z][\w-]*)", " ".join(rest)):
                    name = flag.replace("-", "_") if absl else flag
                    self.assertIn(name, listed, where + ": --%s is not a flag of %s"
                                  % (flag, key))
                in_block += 1
            self.assertGreater(in_block, 0, "%s:%d: a flags block that names no "
                               "moe-serve program" % (f, line))
            checked += in_block
        print("synopses: %d command lines checked against --help" % checked)

    def test_runnable_examples_run_as_written(self):
        runnable = [b for b in self.blocks if b[3] == "run"]
        self.assertGreater(len(runnable), 0)
        scratch = tempfile.mkdtemp(prefix="moe-docs-")
        up = None
        try:
            os.makedirs(os.path.join(scratch, "build"))
            os.symlink(BIN, os.path.join(scratch, "build", "bin"))
            for name in LINKED:
                os.symlink(os.path.join(ROOT, name), os.path.join(scratch, name))
            up = MoeUp(scratch)
            env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "client", "python"))
            for f, line, language, _, _, text in runnable:
                with self.subTest(block="%s:%d" % (f, line)):
                    code = text.replace(ADDRESS, up.target).replace(REST_ADDRESS, up.rest)
                    argv = (["bash", "-e", "-o", "pipefail", "-c", code]
                            if language == "sh" else ["/usr/bin/python3", "-c", code])
                    result = subprocess.run(argv, cwd=scratch, env=env,
                                            capture_output=True, text=True,
                                            timeout=300)
                    self.assertEqual(result.returncode, 0, "%s:%d exit %d:\n%s%s" % (
                        f, line, result.returncode, result.stdout, result.stderr))
                    print("ran %s:%d (%s, %d lines)" % (f, line, language,
                                                       len(text.split("\n"))))
        finally:
            if up:
                up.stop()
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
