#include "testing/golden.h"

#include <ATen/ATen.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/safetensors.h"
#include "common/torch/torch_convert.h"

namespace moe::testing {
namespace {

nlohmann::ordered_json& Index() {
  static nlohmann::ordered_json* index = [] {
    std::ifstream in(std::string(MOE_GOLDEN_DIR) + "/INDEX.json");
    auto* j = new nlohmann::ordered_json(nlohmann::ordered_json::parse(in));
    return j;
  }();
  return *index;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "test setup failed: %s\n", message.c_str());
  std::abort();
}

}  // namespace

std::vector<std::string> GoldenCases() {
  std::vector<std::string> names;
  for (auto it = Index().begin(); it != Index().end(); ++it) {
    names.push_back(it.key());
  }
  return names;
}

std::string GoldenPath(const std::string& name) {
  return std::string(MOE_GOLDEN_DIR) + "/" + name + ".safetensors";
}

std::map<std::string, at::Tensor> ReadAllTensors(const std::string& path) {
  auto reader = common::SafetensorsReader::Open(path);
  if (!reader.ok()) Die(std::string(reader.status().message()));
  std::map<std::string, at::Tensor> out;
  for (const common::TensorEntry& e : (*reader)->tensors()) {
    auto host = (*reader)->Read(e.name);
    if (!host.ok()) Die(std::string(host.status().message()));
    auto t = common::ToTorch(*host);
    if (!t.ok()) Die(std::string(t.status().message()));
    out[e.name] = *t;
  }
  return out;
}

std::string GoldenMode(const std::string& name) {
  return GoldenIndexField(name, "mode");
}

std::string GoldenIndexField(const std::string& name, const std::string& key) {
  const auto& c = Index().at(name);
  if (!c.contains(key)) return "";
  return c.at(key).get<std::string>();
}

int RunProcess(const std::vector<std::string>& argv, std::string* output) {
  const std::string log = TempDir() + "/process.log";
  pid_t pid = ::fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f != nullptr) {
      ::dup2(fileno(f), STDOUT_FILENO);
      ::dup2(fileno(f), STDERR_FILENO);
    }
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (output != nullptr) {
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    *output = ss.str();
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string TempDir() {
  static std::string dir = [] {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "moe-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp failed");
    static std::string to_remove = tmpl;
    std::atexit([] { std::filesystem::remove_all(to_remove); });
    return tmpl;
  }();
  return dir;
}

std::string BinaryPath(const std::string& name) {
  return std::string(MOE_BIN_DIR) + "/" + name;
}

std::string TestPkiFile(const std::string& name) {
  static const std::string dir = [] {
    const std::string d = TempDir() + "/pki";
    std::string out;
    if (RunProcess(
            {std::string(MOE_SOURCE_DIR) + "/tests/testing/make_test_pki.sh",
             d},
            &out) != 0) {
      Die("make_test_pki.sh failed: " + out);
    }
    return d;
  }();
  return dir + "/" + name;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace moe::testing
