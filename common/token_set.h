// TokenSet: the bearer tokens a server accepts, read from a file (one token
// per line; blank lines and lines starting with '#' are ignored) and read
// again when the file changes, so a Kubernetes secret rotation takes effect
// without a restart. Only SHA-256 digests of the tokens are kept, compared
// in constant time; tokens are never logged.
//
//   MOE_ASSIGN_OR_RETURN(auto tokens, TokenSet::FromFile(path));
//   switch (tokens->Check(authorization_header)) { ... }
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace moe::common {

// OK when `token` can travel in a gRPC header ("authorization: Bearer
// <token>"): printable ASCII, 0x20-0x7e. InvalidArgument naming the first
// byte that cannot (gRPC's C++ library aborts the process on a header value
// it refuses, so every sender checks first).
absl::Status CheckSendableToken(absl::string_view token);

// The first token of a token file in TokenSet's format: what a caller sends
// (moe-balancer's admin token). InvalidArgument naming `flag` when the file
// cannot be read, holds no token, or its first token cannot be sent
// (CheckSendableToken).
absl::StatusOr<std::string> ReadFirstToken(const std::string& path,
                                           absl::string_view flag);

class TokenSet {
 public:
  enum class Verdict { kAccepted, kMissing, kUnknown };

  // InvalidArgument naming the file when it cannot be read or holds no
  // token. The file is checked for changes at most every `recheck`.
  static absl::StatusOr<std::unique_ptr<TokenSet>> FromFile(
      const std::string& path, absl::Duration recheck = absl::Seconds(1),
      Clock* clock = Clock::Real());

  // `authorization` is the header's value: "Bearer <token>" (the scheme is
  // case-insensitive). Empty: kMissing. Anything else: kUnknown.
  Verdict Check(absl::string_view authorization);

  // Tokens currently accepted.
  size_t size() const;
  // The file they come from.
  const std::string& path() const { return path_; }

 private:
  TokenSet(std::string path, absl::Duration recheck, Clock* clock);
  // Re-reads the file if it changed; keeps the old tokens (and logs) when
  // the new file cannot be read or is empty.
  void MaybeReload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const absl::Duration recheck_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::Time next_check_ ABSL_GUARDED_BY(mu_);
  std::string file_stamp_ ABSL_GUARDED_BY(mu_);            // mtime, size, inode
  std::vector<std::string> digests_ ABSL_GUARDED_BY(mu_);  // raw SHA-256
};

}  // namespace moe::common
