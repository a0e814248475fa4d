#include "common/cli/command_line.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "common/blas_kernels.h"
#include "common/logging.h"
#include "moe_version.h"

ABSL_FLAG(std::string, log_format, "",
          "How log lines are written: text (\"2026-12-06T04:02:20.123Z I "
          "moe-router: ...\") or json (one object per line: time, level, "
          "program, message; for log pipelines such as Loki or "
          "Elasticsearch). Empty: $MOE_LOG_FORMAT, else text. Passed on to "
          "the programs this one starts (moe-up's router and workers).");

namespace moe::cli {

std::vector<std::string> NormalizeFlagDashes(int argc, char** argv) {
  std::vector<std::string> out;
  bool flags_done = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !flags_done && arg == "--") flags_done = true;
    if (i > 0 && !flags_done && arg.size() > 2 && arg[0] == '-' &&
        arg[1] == '-') {
      const size_t eq = arg.find('=');
      const size_t end = eq == std::string::npos ? arg.size() : eq;
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

std::string VersionText(const char* program) {
  return absl::StrCat(program, " ", moe::kVersion, " (git ", moe::kGitRevision,
                      "), device support: ", moe::kDeviceSupport);
}

std::string HelpText(const char* program, const char* usage) {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    // Ours, not abseil's own (--flagfile, --undefok, ...).
    if (absl::StrContains(flag->Filename(), "absl/")) continue;
    flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
              return a->Name() < b->Name();
            });
  std::string out = absl::StrCat(program, ": ", usage, "\n\nFlags:\n");
  for (const absl::CommandLineFlag* f : flags) {
    std::string def = f->DefaultValue();
    if (f->IsOfType<std::string>()) def = absl::StrCat("\"", def, "\"");
    absl::StrAppend(&out, "  --", f->Name(), " (default ", def, ")\n      ",
                    absl::StrReplaceAll(f->Help(), {{"\n", "\n      "}}), "\n");
  }
  absl::StrAppend(
      &out,
      "\n  --help     this text\n  --version  version, git "
      "revision, device support\n"
      "Flag names take dashes too (--max-queued = --max_queued).\n");
  return out;
}

namespace {

// Debian's abseil checks lock order on every absl::Mutex acquisition
// (deadlock detection: a global graph of which lock was held while taking
// which, under a global spin lock). The programs do not pay for that while
// they serve; the unit tests and the sanitizer builds keep it, and so does
// MOE_MUTEX_DEADLOCK_DETECTION=1.
void TuneMutexForServing() {
#ifndef MOE_SANITIZED
  const char* keep = std::getenv("MOE_MUTEX_DEADLOCK_DETECTION");
  if (keep != nullptr && std::string(keep) == "1") return;
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

// The log format from --log_format (read here, before the flags are
// parsed, so that every line is written alike), else $MOE_LOG_FORMAT, else
// text; exported as $MOE_LOG_FORMAT for the programs this one starts. Exits
// 1 naming the flag for a format that is neither.
void SetUpLogFormat(const char* program, const std::vector<std::string>& args) {
  std::string format;
  bool given = false;
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    // abseil takes -log_format as well as --log_format.
    absl::string_view arg = args[i];
    if (!absl::ConsumePrefix(&arg, "--")) absl::ConsumePrefix(&arg, "-");
    if (absl::ConsumePrefix(&arg, "log_format=")) {
      format = std::string(arg);
      given = true;
    } else if (arg == "log_format" && i + 1 < args.size()) {
      format = args[i + 1];
      given = true;
    }
  }
  if (!given || format.empty()) {
    const char* env = std::getenv("MOE_LOG_FORMAT");
    format = env != nullptr && *env != '\0' ? env : "text";
  }
  const absl::StatusOr<common::LogFormat> parsed =
      common::ParseLogFormat(format);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s: --log_format (or $MOE_LOG_FORMAT): %s\n", program,
                 std::string(parsed.status().message()).c_str());
    std::exit(1);
  }
  common::SetLogFormat(*parsed);
  ::setenv("MOE_LOG_FORMAT", format.c_str(), /*overwrite=*/1);
}

}  // namespace

std::vector<std::string> ParseCommandLine(int argc, char** argv,
                                          const char* program,
                                          const char* usage) {
  common::SetLogProgramName(program);
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> args = NormalizeFlagDashes(argc, argv);
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--") break;
    if (args[i] == "--help" || args[i] == "-h" || args[i] == "-help" ||
        args[i] == "--helpfull" || args[i] == "--helpshort") {
      std::fputs(HelpText(program, usage).c_str(), stdout);
      std::exit(0);
    }
    if (args[i] == "--version") {
      std::printf("%s\n", VersionText(program).c_str());
      std::exit(0);
    }
  }
  SetUpLogFormat(program, args);
  // Past --help and --version, which compute nothing: a program that runs
  // may restart here with the BLAS kernels this CPU supports.
  common::UseOpenBlasKernelsForThisCpu(argv);
  common::TuneAllocatorForReuse();
  TuneMutexForServing();
  std::vector<char*> ptrs;
  for (std::string& a : args) ptrs.push_back(a.data());
  ptrs.push_back(nullptr);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), ptrs.data());
  return std::vector<std::string>(positional.begin(), positional.end());
}

int ExitCode(const absl::Status& status) {
  if (status.ok()) return 0;
  MOE_LOG(ERROR) << status.message();
  return 1;
}

}  // namespace moe::cli
