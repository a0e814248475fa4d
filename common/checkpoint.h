// Checkpoint: a moe-serve checkpoint opened and validated, without LibTorch.
// A safetensors file whose tensor names are st-moe-pytorch state_dict names
// (under each layer's prefix) and whose `__metadata__["config_json"]` holds
// the ModelSpec (common/model_spec.h).
//
// Accepted spellings per layer (docs/numerics.md, "Parameters"):
//   gate.to_gates.weight [E, d]   (HEAD)  or  gate.w_gating [d, E]  (f1a7959)
//   experts.experts.{i}.net.{0,1,2}.*               single-level experts
//   gate_outer.w_gating [d, Eo], gate_inner.w_gating [Eo, d, Ei],
//   experts.{o}.experts.{i}.net.{0,1,2}.*           two-level MoE
//   moe. prefix, moe_prenorm.gamma, ff_before.*, ff_after.*   SparseMoEBlock
// Tensors named input.*, output.*, expected.* and alt.* (test vectors) and
// the gate threshold buffers are not parameters. Open() checks every tensor
// of every layer against its config: a missing, unexpected or misshapen one
// is an InvalidArgument naming the file and the tensor.
//
// Identity: Open() computes the fingerprint (common/fingerprint.h) from the
// digests stored by the writer (checking them against the stored
// fingerprint), or, for a file without them, by reading every tensor once.
// ReadParameter() checks what it reads against the digest.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(path));
//   const LayerParams& p = ckpt->layer_params(0);
//   MOE_ASSIGN_OR_RETURN(HostTensor gate, ckpt->ReadParameter(p.gate));
//
// Thread-safety: immutable after Open(); ReadParameter() may be called
// concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/host_tensor.h"
#include "common/model_spec.h"
#include "common/safetensors.h"

namespace moe::common {

// The five tensors of a GEGLU expert, below its prefix, and the six of a
// block's pre-normed feed-forward.
inline constexpr const char* kExpertParams[5] = {"net.0.weight", "net.0.bias",
                                                 "net.1.mult_bias",
                                                 "net.2.weight", "net.2.bias"};
inline constexpr const char* kFeedForwardParams[6] = {
    "net.0.gamma",     "net.1.weight", "net.1.bias",
    "net.2.mult_bias", "net.3.weight", "net.3.bias"};

// True for the names of test vectors (input.*, output.*, expected.*, alt.*).
bool IsTestVector(absl::string_view name);

// The tensor-name prefix of expert `id` of `layer`:
// "blocks.0.ff.experts.experts.3." or, two-level, "...experts.1.experts.0.",
// with "moe." after the layer prefix for a block.
std::string ExpertParamPrefix(const LayerSpec& layer, int64_t id);

// A layer's parameter names, resolved against the file (full names).
struct LayerParams {
  std::string gate;
  bool gate_transposed = false;  // gate.w_gating [d, E], not [E, d]
  std::string inner_gate;        // two-level: gate_inner.w_gating [Eo, d, Ei]
  std::string prenorm_gamma;     // block only
  // Block feed-forwards: the prefix ("...ff_after."), empty when absent.
  std::string ff_before;
  std::string ff_after;
};

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& path);

  const std::string& path() const { return reader_->path(); }
  const ModelSpec& spec() const { return spec_; }
  const LayerParams& layer_params(int layer) const { return params_[layer]; }
  // "sha256:<hex>".
  const std::string& fingerprint() const { return fingerprint_; }
  // Whether the file carried its digests (else Open() hashed every tensor).
  bool fingerprint_stored() const { return stored_; }

  // Parameter `name` as float32 (F16, BF16 and F64 are converted).
  // DataLoss when its bytes do not match the digest; InvalidArgument when a
  // value is NaN or infinite, naming the tensor.
  absl::StatusOr<HostTensor> ReadParameter(const std::string& name) const;

 private:
  Checkpoint() = default;

  std::unique_ptr<SafetensorsReader> reader_;
  ModelSpec spec_;
  std::vector<LayerParams> params_;
  std::map<std::string, std::string> digests_;  // name -> SHA-256 hex
  std::string fingerprint_;
  bool stored_ = false;
};

// Writes a checkpoint of `spec` holding `tensors` (full names), with the
// config_json, the digest of every tensor and the fingerprint in the
// metadata, atomically. The file is checked by Open() before it replaces
// `path`, so an incomplete model is refused here, naming the tensor.
absl::Status WriteCheckpoint(const std::string& path, const ModelSpec& spec,
                             std::map<std::string, HostTensor> tensors);

}  // namespace moe::common
