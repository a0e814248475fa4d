#include "proto/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::proto {
namespace {

using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;
using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "not PEM";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

BioPtr MemBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())),
                &BIO_free);
}

std::string CaFlag(const TlsFiles& f) {
  return f.ca_flag.empty() ? f.flag_prefix + "_ca_file" : f.ca_flag;
}

std::string CertFlag(const TlsFiles& f) {
  return f.cert_flag.empty() ? f.flag_prefix + "_cert_file" : f.cert_flag;
}

std::string KeyFlag(const TlsFiles& f) {
  return f.key_flag.empty() ? f.flag_prefix + "_key_file" : f.key_flag;
}

// The first certificate of PEM text read from `path` (`bio` is left after
// it).
absl::StatusOr<X509Ptr> FirstCertificateIn(const std::string& flag,
                                           const std::string& path, BIO* bio) {
  X509Ptr cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": ", path, " holds no PEM certificate (", OpenSslError(), ")"));
  }
  return cert;
}

// The first certificate of a PEM file (and that it parses).
absl::StatusOr<X509Ptr> FirstCertificate(const std::string& flag,
                                         const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string pem, ReadPem(flag, path));
  BioPtr bio = MemBio(pem);
  return FirstCertificateIn(flag, path, bio.get());
}

// The private key of PEM text read from the key file, and that it is the
// key of `cert`.
absl::StatusOr<KeyPtr> KeyOf(const TlsFiles& f, X509* cert,
                             const std::string& pem) {
  const std::string key_flag = KeyFlag(f);
  BioPtr bio = MemBio(pem);
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
             &EVP_PKEY_free);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, ": ", f.key_file, " holds no PEM private key (",
                     OpenSslError(), ")"));
  }
  if (X509_check_private_key(cert, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, ": ", f.key_file, " is not the key of ",
                     CertFlag(f), " ", f.cert_file));
  }
  return key;
}

// Cert and key files given together, both PEM, the key the certificate's.
absl::Status CheckPair(const TlsFiles& f) {
  const std::string cert_flag = CertFlag(f);
  const std::string key_flag = KeyFlag(f);
  if (f.cert_file.empty() != f.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, " go together"));
  }
  if (f.cert_file.empty()) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(X509Ptr cert, FirstCertificate(cert_flag, f.cert_file));
  MOE_ASSIGN_OR_RETURN(std::string pem, ReadPem(key_flag, f.key_file));
  return KeyOf(f, cert.get(), pem).status();
}

absl::Status CheckCa(const TlsFiles& f) {
  if (f.ca_file.empty()) return absl::OkStatus();
  return FirstCertificate(CaFlag(f), f.ca_file).status();
}

std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> Provider(
    const TlsFiles& f) {
  const unsigned int refresh =
      static_cast<unsigned int>(std::max(1, f.refresh_seconds));
  if (f.cert_file.empty()) {
    return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        f.ca_file, refresh);
  }
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      f.key_file, f.cert_file, f.ca_file, refresh);
}

}  // namespace

absl::StatusOr<std::string> ReadPem(const std::string& flag,
                                    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", path));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status CheckTlsFiles(const TlsFiles& f) {
  MOE_RETURN_IF_ERROR(CheckPair(f));
  return CheckCa(f);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& f) {
  if (f.cert_file.empty() && f.key_file.empty() && f.ca_file.empty()) {
    return nullptr;
  }
  if (f.cert_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS needs ", f.flag_prefix, "_cert_file and ", f.flag_prefix,
        "_key_file (the client CA alone is not enough)"));
  }
  MOE_RETURN_IF_ERROR(CheckPair(f));
  MOE_RETURN_IF_ERROR(CheckCa(f));
  grpc::experimental::TlsServerCredentialsOptions options(Provider(f));
  options.watch_identity_key_cert_pairs();
  if (!f.ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& f) {
  if (f.cert_file.empty() && f.key_file.empty() && f.ca_file.empty()) {
    return nullptr;
  }
  if (f.ca_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS needs ", f.flag_prefix,
                     "_ca_file (the CA that signed the server's certificate)"));
  }
  MOE_RETURN_IF_ERROR(CheckPair(f));
  MOE_RETURN_IF_ERROR(CheckCa(f));
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(f));
  options.watch_root_certs();
  if (!f.cert_file.empty()) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

struct ServerTlsReloader::Identity {
  // The files' bytes this set was made of.
  std::string cert_pem, key_pem, ca_pem;
  X509Ptr cert{nullptr, &X509_free};
  // The certificates after the first in the certificate file.
  std::unique_ptr<STACK_OF(X509), void (*)(STACK_OF(X509)*)> chain{
      nullptr, [](STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }};
  KeyPtr key{nullptr, &EVP_PKEY_free};
  // With a client CA: its certificates, and their names for the request.
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> ca{nullptr,
                                                             &X509_STORE_free};
  std::unique_ptr<STACK_OF(X509_NAME), void (*)(STACK_OF(X509_NAME)*)> ca_names{
      nullptr, [](STACK_OF(X509_NAME) * s) {
        sk_X509_NAME_pop_free(s, X509_NAME_free);
      }};

  bool SameFiles(const Identity& o) const {
    return cert_pem == o.cert_pem && key_pem == o.key_pem && ca_pem == o.ca_pem;
  }
};

namespace {

// The files' bytes, unparsed.
absl::StatusOr<std::shared_ptr<ServerTlsReloader::Identity>> ReadIdentity(
    const TlsFiles& f) {
  auto id = std::make_shared<ServerTlsReloader::Identity>();
  MOE_ASSIGN_OR_RETURN(id->cert_pem, ReadPem(CertFlag(f), f.cert_file));
  MOE_ASSIGN_OR_RETURN(id->key_pem, ReadPem(KeyFlag(f), f.key_file));
  if (!f.ca_file.empty()) {
    MOE_ASSIGN_OR_RETURN(id->ca_pem, ReadPem(CaFlag(f), f.ca_file));
  }
  return id;
}

// Parses what ReadIdentity read, with the checks of CheckPair and CheckCa.
absl::Status ParseIdentity(const TlsFiles& f, ServerTlsReloader::Identity& id) {
  BioPtr bio = MemBio(id.cert_pem);
  MOE_ASSIGN_OR_RETURN(id.cert,
                       FirstCertificateIn(CertFlag(f), f.cert_file, bio.get()));
  id.chain.reset(sk_X509_new_null());
  while (X509* next = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    sk_X509_push(id.chain.get(), next);
  }
  ERR_clear_error();  // the end of the file
  MOE_ASSIGN_OR_RETURN(id.key, KeyOf(f, id.cert.get(), id.key_pem));
  if (f.ca_file.empty()) return absl::OkStatus();
  BioPtr ca_bio = MemBio(id.ca_pem);
  MOE_ASSIGN_OR_RETURN(X509Ptr first,
                       FirstCertificateIn(CaFlag(f), f.ca_file, ca_bio.get()));
  id.ca.reset(X509_STORE_new());
  id.ca_names.reset(sk_X509_NAME_new_null());
  for (X509Ptr cert = std::move(first); cert != nullptr;
       cert.reset(PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr))) {
    X509_STORE_add_cert(id.ca.get(), cert.get());
    sk_X509_NAME_push(id.ca_names.get(),
                      X509_NAME_dup(X509_get_subject_name(cert.get())));
  }
  ERR_clear_error();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerTlsReloader>> ServerTlsReloader::Create(
    const TlsFiles& files) {
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS needs ", files.flag_prefix, "_cert_file and ",
                     files.flag_prefix, "_key_file"));
  }
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<Identity> id, ReadIdentity(files));
  MOE_RETURN_IF_ERROR(ParseIdentity(files, *id));
  auto reloader =
      std::unique_ptr<ServerTlsReloader>(new ServerTlsReloader(files));
  {
    absl::MutexLock lock(&reloader->mu_);
    reloader->current_ = std::move(id);
    reloader->next_look_ =
        absl::Now() + absl::Seconds(std::max(1, files.refresh_seconds));
  }
  return reloader;
}

ServerTlsReloader::~ServerTlsReloader() = default;

int64_t ServerTlsReloader::reloads() const {
  absl::MutexLock lock(&mu_);
  return reloads_;
}

std::shared_ptr<const ServerTlsReloader::Identity>
ServerTlsReloader::Current() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  if (now < next_look_) return current_;
  next_look_ = now + absl::Seconds(std::max(1, files_.refresh_seconds));
  absl::StatusOr<std::shared_ptr<Identity>> read = ReadIdentity(files_);
  if (read.ok() && (*read)->SameFiles(*current_)) return current_;
  // What is refused is logged once, until the files change again.
  const std::string seen =
      read.ok() ? (*read)->cert_pem + (*read)->key_pem + (*read)->ca_pem
                : std::string(read.status().message());
  if (seen == refused_) return current_;
  absl::Status status = read.status();
  if (status.ok()) status = ParseIdentity(files_, **read);
  if (status.ok()) {
    current_ = *std::move(read);
    refused_.clear();
    ++reloads_;
    MOE_LOG(INFO) << "TLS (" << files_.cert_file
                  << "): the changed files are in use for new connections";
    return current_;
  }
  refused_ = seen;
  MOE_LOG(WARNING) << "TLS (" << files_.cert_file
                   << "): keeping the previous certificate: "
                   << status.message();
  return current_;
}

int ServerTlsReloader::CertCallback(ssl_st* ssl, void* reloader) {
  std::shared_ptr<const Identity> id =
      static_cast<ServerTlsReloader*>(reloader)->Current();
  // Each takes its own references: the set may be replaced at once.
  if (SSL_use_certificate(ssl, id->cert.get()) != 1 ||
      SSL_use_PrivateKey(ssl, id->key.get()) != 1 ||
      SSL_set1_chain(ssl, id->chain.get()) != 1) {
    return 0;
  }
  if (id->ca != nullptr) {
    if (SSL_set1_verify_cert_store(ssl, id->ca.get()) != 1) return 0;
    SSL_set_client_CA_list(ssl, SSL_dup_CA_list(id->ca_names.get()));
  }
  return 1;
}

bool ServerTlsReloader::Install(ssl_ctx_st* ctx) {
  std::shared_ptr<const Identity> id = Current();
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION |
                               SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_use_certificate(ctx, id->cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, id->key.get()) != 1) {
    return false;
  }
  if (id->ca != nullptr) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    if (SSL_CTX_set1_verify_cert_store(ctx, id->ca.get()) != 1) return false;
  }
  SSL_CTX_set_cert_cb(ctx, &ServerTlsReloader::CertCallback, this);
  return true;
}

}  // namespace moe::proto
