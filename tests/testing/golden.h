// Test helpers: the golden reference vectors (tests/golden/data) and running
// the real binaries as child processes.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

namespace moe::testing {

// The golden case names, in INDEX.json order.
std::vector<std::string> GoldenCases();

// tests/golden/data/<name>.safetensors
std::string GoldenPath(const std::string& name);

// Every tensor of a golden file; aborts the test binary if unreadable.
std::map<std::string, at::Tensor> ReadAllTensors(const std::string& path);

// The "mode" of a case in INDEX.json ("eval" or "train").
std::string GoldenMode(const std::string& name);

// A field of a case in INDEX.json, as the string stored there.
std::string GoldenIndexField(const std::string& name, const std::string& key);

// Runs `argv` (argv[0] a path), waits, returns the exit code; stdout and
// stderr go to *output when given.
int RunProcess(const std::vector<std::string>& argv,
               std::string* output = nullptr);

// A fresh temporary directory, removed at exit.
std::string TempDir();

// Path of a built binary in build/bin.
std::string BinaryPath(const std::string& name);

// A file of the test PKI (tests/testing/make_test_pki.sh: ca.crt,
// server.crt, server.key, other_ca.crt, ...), made once per process with
// openssl in TempDir().
std::string TestPkiFile(const std::string& name);

// Max |a - b| over all elements (both converted to float64).
double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b);

}  // namespace moe::testing
