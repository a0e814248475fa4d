// Model identity: the content hash of a checkpoint. Routers and workers
// compare fingerprints so that processes serving different checkpoints
// (a rolling upgrade half done, a typo in a path) never work together.
//
//   tensor digest = SHA-256 of the tensor's data bytes, lower-case hex
//   fingerprint   = "sha256:" + SHA-256 of the text
//       "moe-serve-fingerprint-v1\n" + config_json + "\n" +
//       for every tensor that is not a test vector, in name order:
//         name " " dtype " " dims joined by "," " " digest "\n"
//
// config_json enters verbatim, as stored in the file.
// tools/export_checkpoint.py computes the same (docs/models.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe::common {

// Incremental SHA-256 (OpenSSL).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  // Lower-case hex of the digest; the object is spent afterwards.
  std::string HexDigest();

 private:
  void* ctx_;  // EVP_MD_CTX
};

std::string Sha256Hex(absl::string_view data);

struct TensorDigest {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string sha256;  // hex of the data bytes
};

// REQUIRES: `tensors` sorted by name.
std::string ModelFingerprint(absl::string_view config_json,
                             const std::vector<TensorDigest>& tensors);

}  // namespace moe::common
