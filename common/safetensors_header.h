// The one parser of safetensors headers in moe-serve, in plain C++ (no
// abseil, no JSON library), so that the checkpoint reader
// (common/safetensors.h) and the GPU backend's standalone reader
// (experts/cuda/safetensors_experts.h) check a file the same way. The
// checkpoint fuzz target runs every input through it.
//
// A header is the JSON object of the safetensors format:
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//    ..., "__metadata__": {"key": "value"}}
// Offsets are relative to the start of the data section that follows the
// header. Accepted: strict JSON (RFC 8259: escapes including surrogate
// pairs, valid UTF-8, no duplicate keys, nothing after the object but
// white space), values nested at most 64 deep; tensor entries may carry
// other keys, which are skipped. Checked: every entry has a known dtype, a
// shape of non-negative integers whose byte size equals its offset range
// (computed without overflow), a range inside the data section, no two
// non-empty ranges overlap, names are not empty; metadata values are
// strings.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"

namespace moe::common {

// Largest header accepted (the reference implementation uses the same
// bound).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100 << 20;

struct TensorEntry {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offset in the data section
  uint64_t end = 0;
};

// A parsed, checked header.
struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<TensorEntry> tensors;  // sorted by name
};

// Parses and checks `header_json`, followed by a data section of
// `data_size` bytes. On failure returns false with *error set to a
// message that starts "malformed safetensors file: " and names the tensor
// at fault, if any; *out is then unspecified.
bool ParseSafetensorsHeaderJson(std::string_view header_json,
                                uint64_t data_size, SafetensorsHeader* out,
                                std::string* error);

// The header length that the first 8 bytes of a file (little-endian) give.
uint64_t SafetensorsHeaderLength(const unsigned char prefix[8]);

}  // namespace moe::common
