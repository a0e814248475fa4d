// A protobuf message's bytes, written deterministically (maps in key
// order), for tests that compare two messages bit for bit: a
// field-by-field comparison (MessageDifferencer) takes -0.0 for +0.0.
// Header-only: the fuzz targets use it too.
#pragma once

#include <string>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/message.h"

namespace moe::testing {

inline std::string MessageBytes(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return out;
}

}  // namespace moe::testing
