#include "common/token_set.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

std::string Digest(absl::string_view token) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
         out);
  return std::string(reinterpret_cast<const char*>(out), sizeof(out));
}

// What identifies one version of the file (a secret update swaps a symlink,
// so the inode changes even when mtime and size do not).
std::string Stamp(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  return absl::StrCat(st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, "/",
                      st.st_size, "/", st.st_ino);
}

// The tokens of a file: one per line, blank lines and '#' lines skipped.
absl::StatusOr<std::vector<std::string>> ReadTokens(const std::string& path,
                                                    absl::string_view flag) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", path));
  }
  std::vector<std::string> tokens;
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view token = absl::StripAsciiWhitespace(line);
    if (token.empty() || token[0] == '#') continue;
    tokens.emplace_back(token);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path,
                     " holds no token (one per line; '#' starts a comment)"));
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> ReadDigests(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                       ReadTokens(path, "--auth_tokens_file"));
  std::vector<std::string> digests;
  for (const std::string& token : tokens) digests.push_back(Digest(token));
  return digests;
}

}  // namespace

absl::Status CheckSendableToken(absl::string_view token) {
  for (size_t i = 0; i < token.size(); ++i) {
    const auto c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the bearer token holds byte 0x%02x at offset %d: a gRPC header "
          "carries printable ASCII only (a line end read with the token?)",
          c, i));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFirstToken(const std::string& path,
                                           absl::string_view flag) {
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> tokens, ReadTokens(path, flag));
  const absl::Status sendable = CheckSendableToken(tokens.front());
  if (!sendable.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, ": ", sendable.message()));
  }
  return tokens.front();
}

TokenSet::TokenSet(std::string path, absl::Duration recheck, Clock* clock)
    : path_(std::move(path)), recheck_(recheck), clock_(clock) {}

absl::StatusOr<std::unique_ptr<TokenSet>> TokenSet::FromFile(
    const std::string& path, absl::Duration recheck, Clock* clock) {
  absl::StatusOr<std::vector<std::string>> digests = ReadDigests(path);
  if (!digests.ok()) return digests.status();
  std::unique_ptr<TokenSet> set(new TokenSet(path, recheck, clock));
  absl::MutexLock lock(&set->mu_);
  set->digests_ = *std::move(digests);
  set->file_stamp_ = Stamp(path);
  set->next_check_ = clock->Now() + recheck;
  return set;
}

void TokenSet::MaybeReload() {
  const absl::Time now = clock_->Now();
  if (now < next_check_) return;
  next_check_ = now + recheck_;
  const std::string stamp = Stamp(path_);
  if (stamp == file_stamp_) return;
  absl::StatusOr<std::vector<std::string>> digests = ReadDigests(path_);
  if (!digests.ok()) {
    MOE_LOG(WARNING) << digests.status().message() << "; keeping the "
                     << digests_.size() << " token(s) read before";
    file_stamp_ = stamp;  // say it once per change
    return;
  }
  MOE_LOG(INFO) << "--auth_tokens_file " << path_
                << " changed: " << digests->size() << " token(s) now";
  digests_ = *std::move(digests);
  file_stamp_ = stamp;
}

TokenSet::Verdict TokenSet::Check(absl::string_view authorization) {
  authorization = absl::StripAsciiWhitespace(authorization);
  if (authorization.empty()) return Verdict::kMissing;
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::StartsWithIgnoreCase(authorization, kScheme)) {
    return Verdict::kUnknown;
  }
  const std::string digest = Digest(
      absl::StripLeadingAsciiWhitespace(authorization.substr(kScheme.size())));
  absl::MutexLock lock(&mu_);
  MaybeReload();
  bool found = false;
  for (const std::string& d : digests_) {
    // Every digest compared in full, in constant time.
    found |= CRYPTO_memcmp(d.data(), digest.data(), d.size()) == 0;
  }
  return found ? Verdict::kAccepted : Verdict::kUnknown;
}

size_t TokenSet::size() const {
  absl::MutexLock lock(&mu_);
  return digests_.size();
}

}  // namespace moe::common
