#include "client/cli/client_flags.h"

#include <fstream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "common/token_set.h"
#include "proto/tls.h"

ABSL_FLAG(std::string, target, "",
          "The router's HOST:PORT (forward, bench, stats, info, health).");
ABSL_FLAG(double, timeout_seconds, 60, "Deadline of a call to the router.");
ABSL_FLAG(bool, allow_degraded, false,
          "Accept an answer that lacks some experts' outputs (their workers "
          "failed) instead of failing.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "Talk TLS to the router, checking its certificate against this CA "
          "(PEM).");
ABSL_FLAG(std::string, tls_cert_file, "",
          "Client certificate, for a router that requires one (mutual TLS).");
ABSL_FLAG(std::string, tls_key_file, "", "Private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name the router's certificate must carry, when it is not the host "
          "of --target.");
ABSL_FLAG(std::string, token_file, "",
          "Send the bearer token of this file (its first line) to a router "
          "that requires tokens.");
ABSL_FLAG(std::string, request_id, "",
          "forward: the request ID to send (x-request-id), which the "
          "router's logs name the call by; default: a new one, printed "
          "with the answer and in an error.");
ABSL_FLAG(std::string, traceparent, "",
          "forward: a W3C trace context to send (traceparent, e.g. "
          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01): a "
          "sampled one puts the call's spans in that trace (a router with "
          "--otlp_traces_endpoint).");
ABSL_FLAG(std::string, on_expert_failure, "",
          "Per-request failure policy: drop or fail (default: the "
          "router's).");

namespace moe::cli {

absl::StatusOr<std::string> TargetFromFlags(const char* command) {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(command, " needs --target=HOST:PORT (a moe-router)"));
  }
  return target;
}

absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags() {
  client::ClientOptions options;
  const double timeout = absl::GetFlag(FLAGS_timeout_seconds);
  if (!(timeout > 0)) {
    return absl::InvalidArgumentError("--timeout_seconds must be > 0");
  }
  options.timeout = absl::Seconds(timeout);
  proto::TlsFiles tls;
  tls.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  tls.flag_prefix = "--tls";
  MOE_ASSIGN_OR_RETURN(options.credentials, proto::MakeChannelCredentials(tls));
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    std::string token;
    if (!in || !std::getline(in, token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token_file: cannot read a token from ", token_file));
    }
    options.token = std::string(absl::StripAsciiWhitespace(token));
    if (options.token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--token_file: ", token_file, " starts with a blank line"));
    }
    const absl::Status valid = common::CheckSendableToken(options.token);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token_file: ", token_file, ": ", valid.message()));
    }
  }
  return options;
}

absl::StatusOr<client::ForwardOptions> ForwardOptionsFromFlags() {
  client::ForwardOptions options;
  options.allow_degraded = absl::GetFlag(FLAGS_allow_degraded);
  options.request_id = absl::GetFlag(FLAGS_request_id);
  if (!options.request_id.empty()) {
    const absl::Status usable = common::CheckRequestId(options.request_id);
    if (!usable.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--request_id: ", usable.message()));
    }
  }
  options.traceparent = absl::GetFlag(FLAGS_traceparent);
  if (!options.traceparent.empty() &&
      common::TraceIdOf(options.traceparent).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--traceparent \"", options.traceparent,
        "\": not a W3C traceparent (00-<32 hex trace id>-<16 hex parent "
        "id>-<2 hex flags>)"));
  }
  const std::string policy = absl::GetFlag(FLAGS_on_expert_failure);
  if (policy == "drop") {
    options.on_expert_failure = moe::v1::ON_FAILURE_DROP;
  } else if (policy == "fail") {
    options.on_expert_failure = moe::v1::ON_FAILURE_FAIL;
  } else if (!policy.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--on_expert_failure: \"", policy, "\" is not drop or fail"));
  }
  return options;
}

}  // namespace moe::cli
