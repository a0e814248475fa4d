#include "experts/cuda/safetensors_experts.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "common/float_bits.h"
#include "common/safetensors_header.h"

namespace moe::experts::gpu {
namespace {

Status Invalid(const std::string& path, const std::string& what) {
  return Status(Code::kInvalidArgument, path + ": " + what);
}

const char* const kSuffixes[] = {".net.0.weight", ".net.0.bias",
                                 ".net.1.mult_bias", ".net.2.weight",
                                 ".net.2.bias"};

}  // namespace

Status ReadSafetensorsExperts(const std::string& path,
                              std::vector<NamedExpert>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Invalid(path, "cannot be opened");
  const std::string bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  if (bytes.size() < 8) return Invalid(path, "too short for safetensors");
  const uint64_t header_size = common::SafetensorsHeaderLength(
      reinterpret_cast<const unsigned char*>(bytes.data()));
  if (header_size > bytes.size() - 8 ||
      header_size > common::kMaxSafetensorsHeaderBytes) {
    return Invalid(path, "header length beyond the end of the file");
  }
  const size_t data = 8 + header_size;
  common::SafetensorsHeader header;
  std::string error;
  if (!common::ParseSafetensorsHeaderJson(
          std::string_view(bytes).substr(8, header_size), bytes.size() - data,
          &header, &error)) {
    return Invalid(path, error);
  }
  std::map<std::string, const common::TensorEntry*> tensors;
  for (const common::TensorEntry& t : header.tensors) tensors[t.name] = &t;
  // The parser checked each entry's shape against its byte range.
  auto values = [&](const std::string& name, std::vector<float>* v,
                    std::vector<int64_t>* shape) -> Status {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return Invalid(path, "missing tensor " + name);
    const common::TensorEntry& t = *it->second;
    if (t.dtype != common::DType::kFloat32 &&
        t.dtype != common::DType::kBFloat16) {
      return Invalid(path, name + ": dtype " +
                               common::SafetensorsDTypeName(t.dtype) +
                               " is not F32 or BF16");
    }
    const size_t width = common::ElementSize(t.dtype);
    const size_t count = static_cast<size_t>(t.end - t.begin) / width;
    const char* p = bytes.data() + data + t.begin;
    v->resize(count);
    for (size_t i = 0; i < count; ++i) {
      if (width == 4) {
        std::memcpy(&(*v)[i], p + 4 * i, 4);
      } else {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        (*v)[i] = common::BFloat16ToFloat(b);
      }
    }
    *shape = t.shape;
    return Status();
  };
  for (const auto& [name, unused] : tensors) {
    const std::string suffix = kSuffixes[0];
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string prefix = name.substr(0, name.size() - suffix.size());
    if (prefix.find("experts") == std::string::npos) continue;
    NamedExpert e;
    e.name = prefix;
    std::vector<float>* arrays[] = {&e.expert.w1, &e.expert.b1,
                                    &e.expert.mult_bias, &e.expert.w2,
                                    &e.expert.b2};
    std::vector<int64_t> shapes[5];
    for (int i = 0; i < 5; ++i) {
      MOE_GPU_RETURN_IF_ERROR(
          values(prefix + kSuffixes[i], arrays[i], &shapes[i]));
    }
    if (shapes[0].size() != 2 || shapes[0][0] % 2 != 0) {
      return Invalid(path, name + ": not a [2h, d] matrix");
    }
    e.expert.hidden = shapes[0][0] / 2;
    e.expert.dim = shapes[0][1];
    if (!WellFormed(e.expert)) {
      return Invalid(path, prefix + ": the shapes of its tensors disagree");
    }
    out->push_back(std::move(e));
  }
  return Status();
}

}  // namespace moe::experts::gpu
