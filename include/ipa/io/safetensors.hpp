// SPDX-License-Identifier: MIT
// safetensors (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
// JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then
// the data. The reader validates everything against the file before use: header bound, JSON,
// dtypes, shape x dtype size == span, offsets inside the data, no overlaps and no holes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/bf16.hpp"
#include "ipa/core/compact_matrix.hpp"
#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/mapped_file.hpp"

namespace ipa {

namespace detail {
/// "[2, 3]"
inline std::string shape_text(const std::vector<std::uint64_t>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}
}  // namespace detail

/// One tensor's entry in a safetensors header.
struct safetensors_entry {
  std::string dtype;  ///< "F32", "F16", "BF16", "I32", ...
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte offsets inside the data section
  std::uint64_t elements() const noexcept {
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

/// Bytes per element of a safetensors dtype; 0 for an unknown one.
inline std::size_t safetensors_dtype_size(std::string_view dtype) noexcept {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

/// A safetensors file, validated on construction: mapped from disk (tensors are read where
/// they lie) or held in memory.
class safetensors_file {
 public:
  /// The file at `path`, mapped (mapped_file).
  static safetensors_file load(const std::string& path) {
    auto mapped = std::make_shared<const mapped_file>(path);
    const std::string_view bytes = mapped->bytes();
    return safetensors_file(std::move(mapped), bytes, path);
  }

  /// Parses `bytes` (named `where` in messages); throws io_error on anything malformed.
  safetensors_file(std::string bytes, std::string where)
      : safetensors_file(std::make_shared<const std::string>(std::move(bytes)), std::move(where)) {}

 private:
  safetensors_file(std::shared_ptr<const std::string> bytes, std::string where)
      : safetensors_file(bytes, std::string_view(*bytes), std::move(where)) {}
  // `storage` keeps `bytes` alive (a mapping or a string) for as long as any copy of this file
  safetensors_file(std::shared_ptr<const void> storage, std::string_view bytes, std::string where)
      : storage_(std::move(storage)), bytes_(bytes), where_(std::move(where)) {
    if (bytes_.size() < 8) fail("truncated: " + std::to_string(bytes_.size()) + " bytes, a header length needs 8");
    std::uint64_t n;
    std::memcpy(&n, bytes_.data(), 8);
    constexpr std::uint64_t max_header = 100u << 20;  // the reference implementation's bound
    if (n > max_header) fail("header length " + std::to_string(n) + " exceeds the 100 MiB limit");
    if (n > bytes_.size() - 8)
      fail("truncated: the header claims " + std::to_string(n) + " bytes, the file has " +
           std::to_string(bytes_.size() - 8) + " after the length");
    data_at_ = 8 + n;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(std::string_view(bytes_.data() + 8, n));
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("the header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail("the header is not a JSON object");
    const std::uint64_t data_size = bytes_.size() - data_at_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (!it->is_object()) fail("__metadata__ is not an object");
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (!m->is_string()) fail("__metadata__." + m.key() + " is not a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      const std::string name = it.key();
      const auto& e = *it;
      if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets") ||
          !e["dtype"].is_string() || !e["shape"].is_array() || !e["data_offsets"].is_array() ||
          e["data_offsets"].size() != 2)
        fail("tensor '" + name + "' needs dtype (string), shape (array) and data_offsets ([begin, end])");
      safetensors_entry t;
      t.dtype = e["dtype"].get<std::string>();
      const std::size_t esize = safetensors_dtype_size(t.dtype);
      if (esize == 0) fail("tensor '" + name + "' has unsupported dtype " + t.dtype);
      std::uint64_t count = 1;
      for (const auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) fail("tensor '" + name + "' has a shape entry that is not a whole number");
        const std::uint64_t v = d.get<std::uint64_t>();
        if (v != 0 && count > (std::uint64_t(1) << 62) / v) fail("tensor '" + name + "' has an absurd shape");
        count *= v;
        t.shape.push_back(v);
      }
      for (const auto& o : e["data_offsets"])
        if (!o.is_number_unsigned()) fail("tensor '" + name + "' has data_offsets that are not whole numbers");
      t.begin = e["data_offsets"][0].get<std::uint64_t>();
      t.end = e["data_offsets"][1].get<std::uint64_t>();
      if (t.begin > t.end || t.end > data_size)
        fail("tensor '" + name + "' spans bytes [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
             ") but the data section has " + std::to_string(data_size));
      if (t.end - t.begin != count * esize)
        fail("tensor '" + name + "': shape x " + t.dtype + " needs " + std::to_string(count * esize) +
             " bytes, its data_offsets span " + std::to_string(t.end - t.begin));
      spans.emplace_back(t.begin, t.end);
      tensors_.emplace(name, std::move(t));
    }
    std::sort(spans.begin(), spans.end());
    std::uint64_t at = 0;
    for (const auto& [b, e] : spans) {
      if (b < at) fail("two tensors overlap at byte " + std::to_string(b) + " of the data section");
      if (b > at) fail("the data section has a hole at bytes [" + std::to_string(at) + ", " + std::to_string(b) + ")");
      at = e;
    }
    if (at != data_size)
      fail("the data section has " + std::to_string(data_size - at) + " bytes after the last tensor");
  }

 public:
  const std::map<std::string, safetensors_entry>& tensors() const noexcept { return tensors_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  const safetensors_entry& entry(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw io_error(where_ + ": no tensor named '" + name + "'");
    return it->second;
  }

  /// A floating tensor (F32, F16, BF16 or F64) converted to float; checks the element count.
  std::vector<float> floats(const std::string& name, std::uint64_t expected_elements) const {
    const safetensors_entry& e = entry(name);
    check_count(name, e, expected_elements);
    const char* p = bytes_.data() + data_at_ + e.begin;
    std::vector<float> out(e.elements());
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (e.dtype == "F32") std::memcpy(&out[i], p + 4 * i, 4);
      else if (e.dtype == "F16" || e.dtype == "BF16") {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = e.dtype == "F16" ? from_f16(h) : from_bf16(h);
      } else if (e.dtype == "F64") {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = float(d);
      } else {
        throw io_error(where_ + ": tensor '" + name + "' has dtype " + e.dtype + ", expected a float type");
      }
    }
    return out;
  }

  /// An F32, F16 or BF16 tensor of rows x cols (a vector: rows 1) where it lies, no copy; valid
  /// while storage() lives. Another dtype or shape is an io_error.
  compact_matrix compact(const std::string& name, std::uint64_t rows, std::uint64_t cols) const {
    const safetensors_entry& e = entry(name);
    const bool is_matrix = (e.shape.size() == 2 && e.shape[0] == rows && e.shape[1] == cols) ||
                           (e.shape.size() == 1 && rows == 1 && e.shape[0] == cols);
    if (!is_matrix)
      fail_tensor(name, "has shape " + detail::shape_text(e.shape) + ", expected [" + std::to_string(rows) + ", " +
                            std::to_string(cols) + "]");
    const weight_type type = e.dtype == "F32"   ? weight_type::f32
                             : e.dtype == "F16" ? weight_type::f16
                             : e.dtype == "BF16"
                                 ? weight_type::bf16
                                 : fail_tensor(name, "has dtype " + e.dtype + ", expected F32, F16 or BF16");
    return {type, reinterpret_cast<const unsigned char*>(bytes_.data() + data_at_ + e.begin), std::size_t(rows),
            std::size_t(cols)};
  }
  /// What keeps the bytes that compact() views alive (the mapping, or the bytes given).
  const std::shared_ptr<const void>& storage() const noexcept { return storage_; }

  /// A tensor read exactly as stored; its dtype must be `dtype` (e.g. "I32" for int32_t).
  template <class T>
  std::vector<T> raw(const std::string& name, std::string_view dtype, std::uint64_t expected_elements) const {
    static_assert(std::is_trivially_copyable_v<T>);
    const safetensors_entry& e = entry(name);
    if (e.dtype != dtype || safetensors_dtype_size(dtype) != sizeof(T))
      throw io_error(where_ + ": tensor '" + name + "' has dtype " + e.dtype + ", expected " + std::string(dtype));
    check_count(name, e, expected_elements);
    std::vector<T> out(e.elements());
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + data_at_ + e.begin, out.size() * sizeof(T));
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw io_error(where_ + ": not a valid safetensors file: " + why);
  }
  [[noreturn]] weight_type fail_tensor(const std::string& name, const std::string& why) const {
    throw io_error(where_ + ": tensor '" + name + "' " + why);
  }
  void check_count(const std::string& name, const safetensors_entry& e, std::uint64_t expected) const {
    if (expected != std::uint64_t(-1) && e.elements() != expected)
      throw io_error(where_ + ": tensor '" + name + "' has " + std::to_string(e.elements()) + " elements, expected " +
                     std::to_string(expected));
  }
  std::shared_ptr<const void> storage_;
  std::string_view bytes_;
  std::string where_;
  std::uint64_t data_at_ = 0;
  std::map<std::string, safetensors_entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Any element count (for safetensors_file::floats / raw).
inline constexpr std::uint64_t any_size = std::uint64_t(-1);

/// Collects tensors and writes one safetensors file (atomically).
class safetensors_writer {
 public:
  template <class T>
  void add(const std::string& name, std::string_view dtype, std::vector<std::uint64_t> shape,
           std::span<const T> values) {
    if (safetensors_dtype_size(dtype) != sizeof(T))
      throw config_error("safetensors_writer: dtype " + std::string(dtype) + " does not match the element size");
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;
    if (n != values.size())
      throw shape_error("safetensors_writer: tensor '" + name + "' has " + std::to_string(values.size()) +
                        " values for its shape of " + std::to_string(n));
    if (name == "__metadata__" || index_.count(name))
      throw config_error("safetensors_writer: duplicate or reserved name '" + name + "'");
    const std::uint64_t begin = data_.size();
    data_.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
    index_[name] = {
        {"dtype", std::string(dtype)}, {"shape", shape}, {"data_offsets", {begin, std::uint64_t(data_.size())}}};
  }
  void add_f32(const std::string& name, std::vector<std::uint64_t> shape, std::span<const float> v) {
    add<float>(name, "F32", std::move(shape), v);
  }
  void metadata(const std::string& key, const std::string& value) { meta_[key] = value; }

  /// The file's bytes; the header is padded with spaces to a multiple of 8 (data alignment).
  std::string bytes() const {
    nlohmann::json header = index_;
    if (!meta_.empty()) header["__metadata__"] = meta_;
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string out(8, '\0');
    const std::uint64_t n = h.size();
    std::memcpy(out.data(), &n, 8);
    return out + h + data_;
  }
  void save(const std::string& path) const { write_file_atomic(path, bytes()); }

 private:
  nlohmann::json index_ = nlohmann::json::object();
  std::map<std::string, std::string> meta_;
  std::string data_;
};

}  // namespace ipa
