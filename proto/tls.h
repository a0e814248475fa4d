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

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX
struct ssl_st;      // OpenSSL's SSL

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
  // The CA's flag when it is not flag_prefix + "_ca_file" (a server's
  // client CA: "--tls_client_ca_file").
  std::string ca_flag;
  // The certificate's and key's when not flag_prefix + "_cert_file" and
  // "_key_file" (OpenTelemetry's variables, say).
  std::string cert_flag;
  std::string key_flag;
};

// The bytes of the PEM file at `path`; INVALID_ARGUMENT "<flag>: cannot
// read <path>" when it cannot be opened.
absl::StatusOr<std::string> ReadPem(const std::string& flag,
                                    const std::string& path);

// That the files given are what TLS needs of them: readable PEM (a
// certificate in the CA and certificate files, a private key in the key
// file), certificate and key together, the key the certificate's.
// INVALID_ARGUMENT naming the flag and file otherwise.
absl::Status CheckTlsFiles(const TlsFiles& files);

// Plaintext (null) when no file is given. A server needs cert and key.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// Plaintext (null) when no file is given. TLS needs the CA; cert and key go
// together.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& files);

// The server side of TlsFiles for a TLS server of our own, on OpenSSL (the
// router's REST port, cpp-httplib): the certificate (with any chain after
// it in the file), its key and the client CA, re-read when the files
// change, as the gRPC credentials above are. Every handshake takes the set
// current when it starts; connections already open keep theirs. A changed
// set that does not load (a file half written, a key that is not the
// certificate's) is logged once and the previous set kept until the files
// change again.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(auto tls, ServerTlsReloader::Create(files));
//   httplib::SSLServer https([&](SSL_CTX& ctx) { return tls->Install(&ctx); });
//
// Thread-safety: Install and the handshakes it serves may run on any
// threads; the reloader must outlive every context it was installed on.
class ServerTlsReloader {
 public:
  // Checks the files as MakeServerCredentials does (cert and key needed).
  static absl::StatusOr<std::unique_ptr<ServerTlsReloader>> Create(
      const TlsFiles& files);
  ~ServerTlsReloader();

  // Sets `ctx` up to serve the current set on every handshake (TLS 1.2 or
  // later; with a client CA, a client certificate of it required).
  bool Install(ssl_ctx_st* ctx);

  // New sets taken since Create.
  int64_t reloads() const;

  struct Identity;  // the loaded set (tls.cc)

 private:
  explicit ServerTlsReloader(const TlsFiles& files) : files_(files) {}
  // The set for a handshake starting now: the files are looked at when
  // `refresh_seconds` passed since the last look.
  std::shared_ptr<const Identity> Current();

  const TlsFiles files_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Identity> current_ ABSL_GUARDED_BY(mu_);
  absl::Time next_look_ ABSL_GUARDED_BY(mu_);
  // What failed to load last (the files' bytes, or why they could not
  // be read): logged once.
  std::string refused_ ABSL_GUARDED_BY(mu_);
  int64_t reloads_ ABSL_GUARDED_BY(mu_) = 0;
  // OpenSSL's certificate callback: gives `ssl` the current set.
  static int CertCallback(ssl_st* ssl, void* reloader);
};

}  // namespace moe::proto
