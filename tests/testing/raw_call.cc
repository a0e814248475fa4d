#include "testing/raw_call.h"

#include <grpcpp/generic/generic_stub.h>

#include <utility>

#include "absl/synchronization/notification.h"

namespace moe::testing {

grpc::Status RawCall(const std::string& address, const std::string& method,
                     grpc::ByteBuffer request, absl::Duration timeout,
                     grpc::ByteBuffer* response) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(1 << 30);
  args.SetMaxReceiveMessageSize(1 << 30);
  grpc::GenericStub stub(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::ByteBuffer answer;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request,
                 response != nullptr ? response : &answer, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  return status;
}

grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& request, absl::Duration timeout,
                     grpc::ByteBuffer* response) {
  grpc::Slice slice(request);
  return RawCall(address, method, grpc::ByteBuffer(&slice, 1), timeout,
                 response);
}

}  // namespace moe::testing
