#include "testing/reflection_client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/synchronization/notification.h"
#include "proto/grpc_status.h"

namespace moe::testing {
namespace {

constexpr char kMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

// ServerReflectionRequest{list_services: ""}: field 7, an empty string.
grpc::ByteBuffer ListServicesRequest() {
  static const char kBytes[] = {0x3a, 0x00};
  grpc::Slice slice(kBytes, sizeof(kBytes));
  return grpc::ByteBuffer(&slice, 1);
}

// Reads varint-prefixed fields of `bytes`: the strings of every
// ServerReflectionResponse.list_services_response (6) .service (1) .name (1).
void ServiceNames(const std::string& bytes, int depth,
                  std::vector<std::string>* out) {
  size_t i = 0;
  auto varint = [&](uint64_t* v) {
    *v = 0;
    for (int shift = 0; i < bytes.size() && shift < 64; shift += 7) {
      const auto b = static_cast<unsigned char>(bytes[i++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  };
  static const int kPath[] = {6, 1, 1};
  while (i < bytes.size()) {
    uint64_t tag, v;
    if (!varint(&tag)) return;
    const int field = static_cast<int>(tag >> 3), type = tag & 7;
    if (type == 0) {
      if (!varint(&v)) return;
      continue;
    }
    if (type != 2 || !varint(&v) || v > bytes.size() - i) return;
    const std::string value = bytes.substr(i, v);
    i += v;
    if (field != kPath[depth]) continue;
    if (depth == 2) {
      out->push_back(value);
    } else {
      ServiceNames(value, depth + 1, out);
    }
  }
}

class Reflection final
    : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Reflection() : request_(ListServicesRequest()) {}
  // After the stub prepared the call.
  void Start() {
    StartWrite(&request_);
    StartRead(&response_);
    StartWritesDone();
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    std::vector<grpc::Slice> slices;
    if (response_.Dump(&slices).ok()) {
      std::string bytes;
      for (const grpc::Slice& s : slices) {
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      ServiceNames(bytes, 0, &names_);
    }
  }
  void OnDone(const grpc::Status& status) override {
    status_ = status;
    done_.Notify();
  }
  absl::StatusOr<std::vector<std::string>> Wait() {
    done_.WaitForNotification();
    if (!status_.ok()) return proto::FromGrpcStatus(status_);
    return names_;
  }
  grpc::ClientContext context;

 private:
  grpc::ByteBuffer request_, response_;
  std::vector<std::string> names_;
  grpc::Status status_;
  absl::Notification done_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::string& address, absl::Duration timeout,
    std::shared_ptr<grpc::ChannelCredentials> credentials) {
  auto channel = grpc::CreateChannel(
      address, credentials != nullptr ? credentials
                                      : grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  Reflection reflection;
  reflection.context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  stub.PrepareBidiStreamingCall(&reflection.context, kMethod,
                                grpc::StubOptions(), &reflection);
  reflection.Start();
  return reflection.Wait();
}

}  // namespace moe::testing
