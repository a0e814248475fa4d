#include "proto/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
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

BioPtr MemBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())),
                &BIO_free);
}

// The first certificate of a PEM file (and that it parses).
absl::StatusOr<X509Ptr> FirstCertificate(const std::string& flag,
                                         const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string pem, ReadPem(flag, path));
  BioPtr bio = MemBio(pem);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr),
               &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": ", path, " holds no PEM certificate (", OpenSslError(), ")"));
  }
  return cert;
}

// Cert and key files given together, both PEM, the key the certificate's.
absl::Status CheckPair(const TlsFiles& f) {
  const std::string cert_flag = f.flag_prefix + "_cert_file";
  const std::string key_flag = f.flag_prefix + "_key_file";
  if (f.cert_file.empty() != f.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, " go together"));
  }
  if (f.cert_file.empty()) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(X509Ptr cert, FirstCertificate(cert_flag, f.cert_file));
  MOE_ASSIGN_OR_RETURN(std::string pem, ReadPem(key_flag, f.key_file));
  BioPtr bio = MemBio(pem);
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
             &EVP_PKEY_free);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, ": ", f.key_file, " holds no PEM private key (",
                     OpenSslError(), ")"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(key_flag, ": ", f.key_file, " is not the key of ",
                     cert_flag, " ", f.cert_file));
  }
  return absl::OkStatus();
}

absl::Status CheckCa(const TlsFiles& f) {
  if (f.ca_file.empty()) return absl::OkStatus();
  return FirstCertificate(f.flag_prefix + "_ca_file", f.ca_file).status();
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

}  // namespace moe::proto
