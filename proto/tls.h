// TLS credentials for both hops (client -> router, router -> worker), from
// PEM files that are watched and reloaded when they change (a Kubernetes
// secret rotation): new handshakes use the new certificate, calls in flight
// keep theirs.
//
// Server side: a certificate and key, and optionally a client CA; with the
// CA, a client certificate signed by it is required (mutual TLS).
// Client side: the CA that signed the server's certificate, and optionally a
// certificate and key of its own (for a server that requires one).
//
// The files are checked when the credentials are made (readable, PEM, the
// key matches the certificate), so a mistake is an error at start-up that
// names the flag and the file, not a failed handshake later.
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moe::proto {

struct TlsFiles {
  // Server: the CA client certificates must chain to (empty: none needed).
  // Client: the CA the server's certificate must chain to.
  std::string ca_file;
  std::string cert_file;  // own certificate (chain), PEM
  std::string key_file;   // its private key, PEM
  // How often the files are checked for changes.
  int refresh_seconds = 10;
  // Flag names for error messages, e.g. "--tls" gives "--tls_cert_file".
  std::string flag_prefix = "--tls";
};

// Plaintext (null) when no file is given. A server needs cert and key.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// Plaintext (null) when no file is given. TLS needs the CA; cert and key go
// together.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& files);

}  // namespace moe::proto
