// The router's reader of a worker's answer (RunExpertsResponseView): any
// bytes, cut anywhere, either parse as [rows, dim] outputs whose every row
// converts to float32, or fail with InvalidArgument.
#include <cstdint>
#include <vector>

#include "fuzz_input.h"
#include "proto/expert_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe::fuzz::Input in(data, size);
  const int64_t rows = in.Byte() % 64;
  const int64_t dim = 1 + in.Byte() % 32;
  const size_t piece = in.Byte() % 9;
  auto view = moe::proto::RunExpertsResponseView::Parse(
      moe::fuzz::Sliced(in, piece), rows, dim);
  if (!view.ok()) {
    if (!absl::IsInvalidArgument(view.status())) __builtin_trap();
    return 0;
  }
  std::vector<float> scratch;
  float sum = 0;
  // In pieces of every size, as the combine reads them.
  for (int64_t first = 0; first < rows;) {
    const int64_t count = std::min<int64_t>(rows - first, 1 + first % 3);
    const float* f = view->FloatRows(first, count, &scratch);
    for (int64_t i = 0; i < count * dim; ++i) sum += f[i];
    first += count;
  }
  moe::fuzz::Keep(sum);
  return 0;
}
