// Reader and writer for the safetensors format, written against its
// definition: an 8-byte little-endian header length N, N bytes of JSON
// (`{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// ..., "__metadata__": {"key": "value"}}`), then the data section; offsets are
// relative to the start of the data section.
//
// The reader validates the whole header when the file is opened, with the
// project's one header parser (common/safetensors_header.h). A malformed file
// is an InvalidArgument (or NotFound) status whose message names the file and
// the tensor; nothing is read out of bounds.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
//   MOE_ASSIGN_OR_RETURN(HostTensor x, reader->Read("input.x"));
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
#include "common/safetensors_header.h"

namespace moe::common {

// ParseSafetensorsHeaderJson (common/safetensors_header.h) as a status:
// InvalidArgument whose message starts with `source` (the file).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view header_json, uint64_t data_size,
    absl::string_view source);

// Reads tensors from a file on demand (one pread per tensor), so loading a
// subset never touches the bytes of the others. Thread-compatible; Read() is
// safe to call concurrently.
class SafetensorsReader {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> Open(
      const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const {
    return header_.metadata;
  }
  const std::vector<TensorEntry>& tensors() const { return header_.tensors; }

  // The entry called `name`, or nullptr.
  const TensorEntry* Find(absl::string_view name) const;

  // Reads one tensor. NotFound if there is no such tensor.
  absl::StatusOr<HostTensor> Read(absl::string_view name) const;

 private:
  SafetensorsReader(std::string path, int fd, uint64_t data_start,
                    SafetensorsHeader header);

  std::string path_;
  int fd_;
  uint64_t data_start_;
  SafetensorsHeader header_;
};

// Collects tensors and metadata and writes them as one safetensors file.
class SafetensorsWriter {
 public:
  void SetMetadata(const std::string& key, const std::string& value);

  // Adds a tensor. InvalidArgument if the name is taken or empty, or the data
  // size does not match dtype and shape.
  absl::Status Add(const std::string& name, HostTensor tensor);

  // The complete file contents.
  std::string Serialize() const;

  // Writes the file atomically (a temporary file renamed over `path`).
  absl::Status WriteFile(const std::string& path) const;

 private:
  std::map<std::string, std::string> metadata_;
  std::map<std::string, HostTensor> tensors_;
};

}  // namespace moe::common
