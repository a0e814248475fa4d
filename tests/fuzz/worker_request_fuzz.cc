// The worker's validation of a RunExperts request (RunExpertsRequestView):
// any bytes, cut anywhere, give either a view whose segments partition its
// rows and whose token bytes can be read, or InvalidArgument (or
// ResourceExhausted for more rows than the worker takes). Never a crash,
// an overflow or a read outside the message.
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_input.h"
#include "proto/expert_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe::fuzz::Input in(data, size);
  const int64_t dim = 1 + in.Byte() % 32;
  const int64_t max_rows = 1 + in.Byte() * 4;
  const int layers = 1 + in.Byte() % 4;
  const size_t piece = in.Byte() % 9;
  auto view = moe::proto::RunExpertsRequestView::Parse(
      moe::fuzz::Sliced(in, piece), dim, max_rows, layers);
  if (!view.ok()) {
    if (!absl::IsInvalidArgument(view.status()) &&
        !absl::IsResourceExhausted(view.status())) {
      __builtin_trap();
    }
    return 0;
  }
  int64_t sum = 0;
  for (const moe::common::ExpertSegment& s : view->segments()) {
    if (s.count < 0 || s.offset != sum || s.key.layer < 0 ||
        s.key.layer >= layers) {
      __builtin_trap();
    }
    sum += s.count;
  }
  if (sum != view->rows() || view->rows() > max_rows) __builtin_trap();
  std::string scratch;
  const void* rows = view->TokenData(&scratch);
  const size_t bytes =
      view->rows() * dim * moe::common::ElementSize(view->tokens_dtype());
  if (bytes > 0) {
    // Every byte of the rows is readable (ASan checks the range).
    uint8_t x = 0;
    for (size_t i = 0; i < bytes; ++i) {
      x ^= static_cast<const uint8_t*>(rows)[i];
    }
    moe::fuzz::Keep(x);
  }
  return 0;
}
