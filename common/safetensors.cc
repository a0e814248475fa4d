#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

using Json = nlohmann::json;

absl::Status Malformed(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": malformed safetensors file: ", what));
}

absl::Status ReadFully(int fd, uint64_t offset, char* out, uint64_t size,
                       absl::string_view source) {
  uint64_t done = 0;
  while (done < size) {
    ssize_t n =
        ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InternalError(
          absl::StrCat(source, ": read failed: ", std::strerror(errno)));
    }
    if (n == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": file ended early (truncated?)"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    absl::string_view header_json, uint64_t data_size,
    absl::string_view source) {
  SafetensorsHeader header;
  std::string error;
  if (!ParseSafetensorsHeaderJson(
          std::string_view(header_json.data(), header_json.size()), data_size,
          &header, &error)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", error));
  }
  return header;
}

SafetensorsReader::SafetensorsReader(std::string path, int fd,
                                     uint64_t data_start,
                                     SafetensorsHeader header)
    : path_(std::move(path)),
      fd_(fd),
      data_start_(data_start),
      header_(std::move(header)) {}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message =
        absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message)
                         : absl::PermissionDeniedError(message);
  }
  auto fail = [fd](absl::Status status) {
    ::close(fd);
    return status;
  };
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return fail(absl::InternalError(
        absl::StrCat(path, ": cannot stat: ", std::strerror(errno))));
  }
  if (!S_ISREG(st.st_mode)) {
    return fail(
        absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file")));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return fail(Malformed(path, absl::StrCat("file is ", file_size,
                                             " bytes, shorter than the 8-byte "
                                             "header length")));
  }
  unsigned char len_bytes[8];
  absl::Status status =
      ReadFully(fd, 0, reinterpret_cast<char*>(len_bytes), 8, path);
  if (!status.ok()) return fail(status);
  const uint64_t header_len = SafetensorsHeaderLength(len_bytes);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return fail(Malformed(path, absl::StrCat("header length ", header_len,
                                             " exceeds the limit of ",
                                             kMaxSafetensorsHeaderBytes)));
  }
  if (header_len > file_size - 8) {
    return fail(
        Malformed(path, absl::StrCat("header length ", header_len,
                                     " is longer than the rest of the file (",
                                     file_size - 8, " bytes): truncated?")));
  }
  std::string json(header_len, '\0');
  status = ReadFully(fd, 8, json.data(), header_len, path);
  if (!status.ok()) return fail(status);
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(json, file_size - 8 - header_len, path);
  if (!header.ok()) return fail(header.status());
  return std::unique_ptr<SafetensorsReader>(
      new SafetensorsReader(path, fd, 8 + header_len, std::move(*header)));
}

const TensorEntry* SafetensorsReader::Find(absl::string_view name) const {
  auto it = std::lower_bound(
      header_.tensors.begin(), header_.tensors.end(), name,
      [](const TensorEntry& e, absl::string_view n) { return e.name < n; });
  if (it == header_.tensors.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<HostTensor> SafetensorsReader::Read(
    absl::string_view name) const {
  const TensorEntry* entry = Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": no tensor named \"", name, "\""));
  }
  HostTensor tensor;
  tensor.dtype = entry->dtype;
  tensor.shape = entry->shape;
  tensor.data.resize(entry->end - entry->begin);
  MOE_RETURN_IF_ERROR(ReadFully(
      fd_, data_start_ + entry->begin, tensor.data.data(), tensor.data.size(),
      absl::StrCat(path_, " (tensor \"", name, "\")")));
  return tensor;
}

void SafetensorsWriter::SetMetadata(const std::string& key,
                                    const std::string& value) {
  metadata_[key] = value;
}

absl::Status SafetensorsWriter::Add(const std::string& name,
                                    HostTensor tensor) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tensor name \"", name, "\""));
  }
  if (tensors_.count(name) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" added twice"));
  }
  MOE_ASSIGN_OR_RETURN(int64_t numel, NumElements(tensor.shape));
  const uint64_t expected =
      static_cast<uint64_t>(numel) * ElementSize(tensor.dtype);
  if (tensor.data.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\": shape ", ShapeToString(tensor.shape), " of ",
        SafetensorsDTypeName(tensor.dtype), " needs ", expected, " bytes, got ",
        tensor.data.size()));
  }
  tensors_.emplace(name, std::move(tensor));
  return absl::OkStatus();
}

std::string SafetensorsWriter::Serialize() const {
  Json header = Json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors_) {
    header[name] = {{"dtype", SafetensorsDTypeName(tensor.dtype)},
                    {"shape", tensor.shape},
                    {"data_offsets", {offset, offset + tensor.data.size()}}};
    offset += tensor.data.size();
  }
  std::string json = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  uint64_t len = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(len >> (8 * i)));
  out += json;
  for (const auto& [name, tensor] : tensors_) out += tensor.data;
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  const std::string bytes = Serialize();
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(
          absl::StrCat(tmp, ": write failed: ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": cannot write: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace moe::common
