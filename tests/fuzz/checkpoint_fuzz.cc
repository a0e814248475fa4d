// The safetensors and checkpoint parser: any file either opens as a checked
// checkpoint, whose every parameter then reads (or fails with a clear
// error: DataLoss for a digest mismatch, InvalidArgument for a non-finite
// weight), or is refused with an error. The header parser alone also gets
// the bytes as JSON.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/safetensors.h"

namespace {

// One in-memory file for the whole run.
const std::string& FilePath(int* fd) {
  static int file = memfd_create("checkpoint-fuzz", 0);
  static const std::string path = absl::StrCat("/proc/self/fd/", file);
  *fd = file;
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)moe::common::ParseSafetensorsHeader(
      absl::string_view(reinterpret_cast<const char*>(data), size), size,
      "fuzz");
  int fd = -1;
  const std::string& path = FilePath(&fd);
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    return 0;
  }
  auto ckpt = moe::common::Checkpoint::Open(path);
  if (!ckpt.ok()) return 0;
  const moe::common::ModelSpec& spec = (*ckpt)->spec();
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const moe::common::LayerParams& p = (*ckpt)->layer_params(l);
    const std::string expert =
        moe::common::ExpertParamPrefix(spec.layers[l], 0);
    for (const std::string& name :
         {p.gate, p.inner_gate, p.prenorm_gamma, expert + "net.0.weight",
          expert + "net.1.mult_bias", expert + "net.2.bias"}) {
      if (name.empty()) continue;
      auto t = (*ckpt)->ReadParameter(name);
      if (!t.ok() && !absl::IsDataLoss(t.status()) &&
          !absl::IsInvalidArgument(t.status()) &&
          !absl::IsNotFound(t.status())) {
        __builtin_trap();
      }
    }
  }
  return 0;
}
