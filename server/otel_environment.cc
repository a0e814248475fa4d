#include "server/otel_environment.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace moe::server {
namespace {

// A variable's value; "" when unset.
std::string Get(const std::function<const char*(const char*)>& getenv,
                const char* name) {
  const char* v = getenv(name);
  return v == nullptr ? "" : std::string(v);
}

// OTEL_EXPORTER_OTLP_TRACES_<setting> when set, else
// OTEL_EXPORTER_OTLP_<setting>; *name says which (the general one when
// neither is set).
std::string TracesOrGeneral(
    const std::function<const char*(const char*)>& getenv,
    absl::string_view setting, std::string* name) {
  *name = absl::StrCat("OTEL_EXPORTER_OTLP_TRACES_", setting);
  std::string v = Get(getenv, name->c_str());
  if (v.empty()) {
    *name = absl::StrCat("OTEL_EXPORTER_OTLP_", setting);
    v = Get(getenv, name->c_str());
  }
  return v;
}

// RFC 9110's token characters: what a header name may hold.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
        !absl::StrContains("!#$%&'*+-.^_`|~", c)) {
      return false;
    }
  }
  return true;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = absl::ascii_tolower(static_cast<unsigned char>(c));
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "key1=value1,key2=value2" (W3C Baggage's form: blanks around keys and
// values dropped, values percent-decoded) of variable `name`. Entry
// numbers, never values, name what is wrong.
absl::StatusOr<KeyValues> ParseKeyValues(const std::string& name,
                                         absl::string_view text,
                                         bool header_names) {
  KeyValues out;
  int entry = 0;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    ++entry;
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const absl::string_view key =
        absl::StripAsciiWhitespace(item.substr(0, eq));
    if (eq == absl::string_view::npos || key.empty() ||
        (header_names && !IsToken(key))) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": entry ", entry,
                       " is not key=value (a list like "
                       "\"key1=value1,key2=value2\"",
                       header_names ? "; keys are HTTP header names)" : ")"));
    }
    const absl::string_view raw =
        absl::StripAsciiWhitespace(item.substr(eq + 1));
    std::string value;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '%') {
        value += raw[i];
        continue;
      }
      const int hi = i + 2 < raw.size() ? HexDigit(raw[i + 1]) : -1;
      const int lo = i + 2 < raw.size() ? HexDigit(raw[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": entry ", entry, " (", key,
                         "): a % that is not followed by two hex digits"));
      }
      value += static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (header_names &&
        (absl::StrContains(value, '\r') || absl::StrContains(value, '\n') ||
         absl::StrContains(value, '\0'))) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": entry ", entry, " (", key,
                       "): a header value may not hold a line break"));
    }
    out.emplace_back(std::string(key), std::move(value));
  }
  return out;
}

// Variable `name`'s whole number from `min` to `max`; nullopt when unset.
absl::StatusOr<std::optional<int64_t>> WholeNumber(const std::string& name,
                                                   const std::string& text,
                                                   int64_t min, int64_t max) {
  if (text.empty()) return std::nullopt;
  int64_t n = 0;
  if (!absl::SimpleAtoi(text, &n) || n < min || n > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " \"", text, "\": must be a whole number from ", min,
                     " to ", max));
  }
  return n;
}

}  // namespace

absl::StatusOr<OtelEnvironment> ReadOtelEnvironment(
    const std::function<const char*(const char*)>& getenv,
    bool endpoint_given) {
  OtelEnvironment env;
  if (absl::EqualsIgnoreCase(Get(getenv, "OTEL_SDK_DISABLED"), "true")) {
    // The endpoint variables are not used.
  } else if (std::string e = Get(getenv, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
             !e.empty()) {
    env.traces_endpoint = std::move(e);
    env.endpoint_variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
  } else if (std::string base = Get(getenv, "OTEL_EXPORTER_OTLP_ENDPOINT");
             !base.empty()) {
    env.traces_endpoint =
        absl::StrCat(base, absl::EndsWith(base, "/") ? "" : "/", "v1/traces");
    env.endpoint_variable = "OTEL_EXPORTER_OTLP_ENDPOINT";
  }
  // No tracing: the other variables are for other programs of the pod.
  if (!endpoint_given && env.traces_endpoint.empty()) return env;
  std::string name;
  const std::string headers = TracesOrGeneral(getenv, "HEADERS", &name);
  MOE_ASSIGN_OR_RETURN(env.headers,
                       ParseKeyValues(name, headers, /*header_names=*/true));
  env.certificate =
      TracesOrGeneral(getenv, "CERTIFICATE", &env.certificate_variable);
  env.protocol = TracesOrGeneral(getenv, "PROTOCOL", &env.protocol_variable);
  env.compression =
      TracesOrGeneral(getenv, "COMPRESSION", &env.compression_variable);
  env.client_certificate = TracesOrGeneral(getenv, "CLIENT_CERTIFICATE",
                                           &env.client_certificate_variable);
  env.client_key =
      TracesOrGeneral(getenv, "CLIENT_KEY", &env.client_key_variable);
  if (const std::string insecure = TracesOrGeneral(getenv, "INSECURE", &name);
      !insecure.empty()) {
    if (absl::EqualsIgnoreCase(insecure, "true")) {
      env.insecure = true;
    } else if (absl::EqualsIgnoreCase(insecure, "false")) {
      env.insecure = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " \"", insecure, "\": must be true or false"));
    }
  }
  constexpr int64_t kTenMinutesMs = 600000;
  constexpr int64_t kMaxSpans = 1000000;
  const std::string timeout = TracesOrGeneral(getenv, "TIMEOUT", &name);
  MOE_ASSIGN_OR_RETURN(env.timeout_ms,
                       WholeNumber(name, timeout, 1, kTenMinutesMs));
  // OTEL_BSP_<setting>, a whole number from 1 to `max`.
  auto batching = [&getenv](absl::string_view setting, int64_t max) {
    const std::string variable = absl::StrCat("OTEL_BSP_", setting);
    return WholeNumber(variable, Get(getenv, variable.c_str()), 1, max);
  };
  MOE_ASSIGN_OR_RETURN(env.schedule_delay_ms,
                       batching("SCHEDULE_DELAY", kTenMinutesMs));
  MOE_ASSIGN_OR_RETURN(env.max_queue_size,
                       batching("MAX_QUEUE_SIZE", kMaxSpans));
  MOE_ASSIGN_OR_RETURN(env.max_export_batch_size,
                       batching("MAX_EXPORT_BATCH_SIZE",
                                env.max_queue_size.value_or(kMaxSpans)));
  MOE_ASSIGN_OR_RETURN(env.export_timeout_ms,
                       batching("EXPORT_TIMEOUT", kTenMinutesMs));
  MOE_ASSIGN_OR_RETURN(KeyValues attributes,
                       ParseKeyValues("OTEL_RESOURCE_ATTRIBUTES",
                                      Get(getenv, "OTEL_RESOURCE_ATTRIBUTES"),
                                      /*header_names=*/false));
  for (auto& [key, value] : attributes) {
    if (key == "service.name") {
      env.service_name = std::move(value);
    } else {
      env.resource_attributes.emplace_back(std::move(key), std::move(value));
    }
  }
  if (std::string s = Get(getenv, "OTEL_SERVICE_NAME"); !s.empty()) {
    env.service_name = std::move(s);
  }
  const std::string sampler =
      absl::AsciiStrToLower(Get(getenv, "OTEL_TRACES_SAMPLER"));
  const std::string arg = Get(getenv, "OTEL_TRACES_SAMPLER_ARG");
  // moe-serve's sampling always follows a caller's decision; the sampler
  // only says what to do for calls without one.
  auto ratio_of_arg = [&]() -> absl::StatusOr<double> {
    if (arg.empty()) return 1.0;
    double r = 0;
    if (!absl::SimpleAtod(arg, &r) || !(r >= 0 && r <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("OTEL_TRACES_SAMPLER_ARG \"", arg,
                       "\": must be a ratio from 0 to 1"));
    }
    return r;
  };
  if (sampler.empty()) {
    // Not set: the flag's default.
  } else if (sampler == "parentbased_always_on" || sampler == "always_on") {
    env.sample_ratio = 1.0;
  } else if (sampler == "parentbased_always_off" || sampler == "always_off") {
    env.sample_ratio = 0.0;
  } else if (sampler == "parentbased_traceidratio" ||
             sampler == "traceidratio") {
    MOE_ASSIGN_OR_RETURN(env.sample_ratio, ratio_of_arg());
  } else {
    env.warnings.push_back(absl::StrCat(
        "OTEL_TRACES_SAMPLER=", sampler,
        " is not one moe-serve knows (parentbased_always_on, "
        "parentbased_always_off, parentbased_traceidratio): not used"));
  }
  if (env.sample_ratio && !absl::StartsWith(sampler, "parentbased_")) {
    env.warnings.push_back(absl::StrCat(
        "OTEL_TRACES_SAMPLER=", sampler,
        ": moe-serve follows its callers' sampling decisions; taken as "
        "parentbased_",
        sampler));
  }
  return env;
}

}  // namespace moe::server
