#include "common/fingerprint.h"

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moe::common {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr);
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::Update(const void* data, size_t size) {
  if (size > 0) {
    EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, size);
  }
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), digest, &n);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (unsigned int i = 0; i < n; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}

std::string Sha256Hex(absl::string_view data) {
  Sha256 h;
  h.Update(data.data(), data.size());
  return h.HexDigest();
}

std::string ModelFingerprint(absl::string_view config_json,
                             const std::vector<TensorDigest>& tensors) {
  Sha256 h;
  const std::string head =
      absl::StrCat("moe-serve-fingerprint-v1\n", config_json, "\n");
  h.Update(head.data(), head.size());
  for (const TensorDigest& t : tensors) {
    const std::string line =
        absl::StrCat(t.name, " ", SafetensorsDTypeName(t.dtype), " ",
                     absl::StrJoin(t.shape, ","), " ", t.sha256, "\n");
    h.Update(line.data(), line.size());
  }
  return "sha256:" + h.HexDigest();
}

}  // namespace moe::common
