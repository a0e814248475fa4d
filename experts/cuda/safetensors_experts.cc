#include "experts/cuda/safetensors_experts.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "common/float_bits.h"

namespace moe::experts::gpu {
namespace {

// Just enough JSON for a safetensors header: objects, arrays, strings,
// integers, and literals skipped over.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : s_(text) {}

  struct Tensor {
    std::string dtype;
    std::vector<int64_t> shape;
    int64_t begin = -1, end = -1;
  };

  bool Parse(std::map<std::string, Tensor>* tensors) {
    if (!Expect('{')) return false;
    if (Peek() == '}') return Expect('}');
    do {
      std::string name;
      if (!String(&name) || !Expect(':')) return false;
      if (name == "__metadata__") {
        if (!Skip()) return false;
      } else if (!TensorEntry(&(*tensors)[name])) {
        return false;
      }
    } while (Accept(','));
    return Expect('}');
  }

 private:
  bool TensorEntry(Tensor* t) {
    if (!Expect('{')) return false;
    do {
      std::string key;
      if (!String(&key) || !Expect(':')) return false;
      if (key == "dtype") {
        if (!String(&t->dtype)) return false;
      } else if (key == "shape") {
        if (!IntArray(&t->shape)) return false;
      } else if (key == "data_offsets") {
        std::vector<int64_t> o;
        if (!IntArray(&o) || o.size() != 2) return false;
        t->begin = o[0];
        t->end = o[1];
      } else if (!Skip()) {
        return false;
      }
    } while (Accept(','));
    return Expect('}');
  }

  bool IntArray(std::vector<int64_t>* v) {
    if (!Expect('[')) return false;
    if (Accept(']')) return true;
    do {
      int64_t n = 0;
      if (!Int(&n)) return false;
      v->push_back(n);
    } while (Accept(','));
    return Expect(']');
  }

  bool Int(int64_t* n) {
    Space();
    size_t digits = 0;
    *n = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      if (*n > (int64_t{1} << 53)) return false;
      *n = *n * 10 + (s_[i_++] - '0');
      ++digits;
    }
    return digits > 0;
  }

  bool String(std::string* out) {
    if (!Expect('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') {
        if (++i_ >= s_.size()) return false;
        if (s_[i_] == 'u') {  // names here are ASCII: keep the escape as is
          out->append("\\u");
          ++i_;
          continue;
        }
      }
      out->push_back(s_[i_++]);
    }
    return Expect('"');
  }

  // Any value.
  bool Skip() {
    Space();
    const char c = Peek();
    if (c == '"') {
      std::string unused;
      return String(&unused);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++i_;
      if (Accept(close)) return true;
      do {
        if (c == '{') {
          std::string unused;
          if (!String(&unused) || !Expect(':')) return false;
        }
        if (!Skip()) return false;
      } while (Accept(','));
      return Expect(close);
    }
    const size_t start = i_;
    while (i_ < s_.size() && std::strchr(",}] \n\t\r", s_[i_]) == nullptr) ++i_;
    return i_ > start;
  }

  void Space() {
    while (i_ < s_.size() && std::strchr(" \n\t\r", s_[i_]) != nullptr) ++i_;
  }
  char Peek() {
    Space();
    return i_ < s_.size() ? s_[i_] : '\0';
  }
  bool Accept(char c) {
    if (Peek() != c) return false;
    ++i_;
    return true;
  }
  bool Expect(char c) { return Accept(c); }

  const std::string& s_;
  size_t i_ = 0;
};

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
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = header_size << 8 | static_cast<unsigned char>(bytes[i]);
  }
  if (header_size > bytes.size() - 8) {
    return Invalid(path, "header length beyond the end of the file");
  }
  const std::string header = bytes.substr(8, header_size);
  const size_t data = 8 + header_size;
  std::map<std::string, HeaderParser::Tensor> tensors;
  if (!HeaderParser(header).Parse(&tensors)) {
    return Invalid(path, "the header is not the JSON safetensors expects");
  }
  for (const auto& [name, t] : tensors) {
    if (t.begin < 0 || t.end < t.begin ||
        static_cast<size_t>(t.end) > bytes.size() - data) {
      return Invalid(path, name + ": data offsets lie outside the file");
    }
  }
  auto values = [&](const std::string& name, std::vector<float>* v,
                    std::vector<int64_t>* shape) -> Status {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return Invalid(path, "missing tensor " + name);
    const HeaderParser::Tensor& t = it->second;
    const size_t width = t.dtype == "F32" ? 4 : t.dtype == "BF16" ? 2 : 0;
    if (width == 0) {
      return Invalid(path, name + ": dtype " + t.dtype + " is not F32 or BF16");
    }
    size_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || (d > 0 && count > bytes.size() / static_cast<size_t>(d))) {
        return Invalid(path, name + ": shape larger than the file");
      }
      count *= static_cast<size_t>(d);
    }
    if (t.begin < 0 || t.end < t.begin ||
        static_cast<size_t>(t.end - t.begin) != count * width ||
        static_cast<size_t>(t.end) > bytes.size() - data) {
      return Invalid(path, name +
                               ": data offsets do not match its shape or "
                               "lie outside the file");
    }
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
