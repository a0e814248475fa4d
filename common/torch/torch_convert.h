// Conversions between HostTensor (raw bytes) and LibTorch tensors, and the one
// wrapper through which LibTorch calls turn exceptions into Status.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/host_tensor.h"

namespace moe::common {

// Copies `tensor` into a new CPU tensor of the same dtype and shape.
// InvalidArgument for a data size that does not match, or a dtype LibTorch
// does not represent.
absl::StatusOr<at::Tensor> ToTorch(const HostTensor& tensor);

// Copies a CPU or CUDA tensor of a supported dtype into a HostTensor.
absl::StatusOr<HostTensor> FromTorch(const at::Tensor& tensor);

// Maps between the two dtype vocabularies.
absl::StatusOr<c10::ScalarType> ToScalarType(DType dtype);
absl::StatusOr<DType> FromScalarType(c10::ScalarType type);

// Runs `fn` and converts a c10::Error or std::exception it throws into an
// Internal status that starts with `what`. Use it around every LibTorch call
// on a path that must not throw (request handlers, loaders).
template <typename Fn>
absl::Status TorchCall(const char* what, Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

// Sets LibTorch's intra-op threads for the calling thread (and the
// process default) to `n` unless they already are. OpenMP keeps the count
// per thread: a thread that never set it runs LibTorch's parallel kernels on
// a team of one thread per core, whose spinning competes with OpenBLAS's
// own threads (measured: small expert calls 8x slower). Call it in each
// thread that runs LibTorch work.
void UseIntraOpThreads(int n);

}  // namespace moe::common
