// The vocabulary of expert work, from the dispatch plan to the wire: which
// expert of which layer gets which rows of a block of tokens.
#pragma once

#include <cstdint>
#include <tuple>

namespace moe::common {

// An expert of a model: its layer's index (in ModelSpec::layers order) and
// its id in the layer (o * Ei + i in a two-level MoE).
struct ExpertKey {
  int32_t layer = 0;
  int64_t expert = 0;

  friend bool operator==(const ExpertKey& a, const ExpertKey& b) {
    return a.layer == b.layer && a.expert == b.expert;
  }
  friend bool operator!=(const ExpertKey& a, const ExpertKey& b) {
    return !(a == b);
  }
  friend bool operator<(const ExpertKey& a, const ExpertKey& b) {
    return std::tie(a.layer, a.expert) < std::tie(b.layer, b.expert);
  }
};

// Rows [offset, offset + count) of a block of token rows go to `key`.
struct ExpertSegment {
  ExpertKey key;
  int64_t offset = 0;
  int64_t count = 0;
};

}  // namespace moe::common
