// SPDX-License-Identifier: MIT
// GGUF (ggml/llama.cpp's model format, versions 2 and 3): magic "GGUF", version, tensor and
// metadata counts, metadata key/values of every GGUF type (nested arrays included), tensor
// infos, then the data section aligned to general.alignment (32). The reader checks every count,
// length and offset against the file before allocating. A file is mapped, not copied; tensors
// F32, F16, BF16, Q4_0, Q8_0, Q3_K, Q4_K, Q5_K and Q6_K (ggml_blocks.hpp) are dequantised to float (floats()) or
// seen as stored (compact()). `load_gguf_llama` maps the `llama` architecture onto llama_weights
// (`load_gguf_llama_compact` keeps its matrices as stored) and the SentencePiece tokenizer in
// the metadata onto llama2c_tokenizer.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ipa/core/bf16.hpp"
#include "ipa/core/compact_matrix.hpp"
#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/mapped_file.hpp"
#include "ipa/io/safetensors.hpp"  // detail::shape_text
#include "ipa/model/llama_weights.hpp"
#include "ipa/text/llama2c_tokenizer.hpp"

namespace ipa {

/// One metadata value: a scalar, a string, or an array of values.
struct gguf_value {
  enum kind_t : std::uint32_t { u8, i8, u16, i16, u32, i32, f32, boolean, string, array, u64, i64, f64 };
  kind_t kind = u32;
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string, std::vector<gguf_value>> v;

  long long as_int(const std::string& key) const {
    if (const auto* u = std::get_if<std::uint64_t>(&v)) {
      if (*u > std::uint64_t(INT64_MAX)) throw io_error("gguf: " + key + " is too large");
      return static_cast<long long>(*u);
    }
    if (const auto* i = std::get_if<std::int64_t>(&v)) return *i;
    throw io_error("gguf: " + key + " is not an integer");
  }
  double as_double(const std::string& key) const {
    if (const auto* d = std::get_if<double>(&v)) return *d;
    return double(as_int(key));
  }
  const std::string& as_string(const std::string& key) const {
    if (const auto* s = std::get_if<std::string>(&v)) return *s;
    throw io_error("gguf: " + key + " is not a string");
  }
  const std::vector<gguf_value>& as_array(const std::string& key) const {
    if (const auto* a = std::get_if<std::vector<gguf_value>>(&v)) return *a;
    throw io_error("gguf: " + key + " is not an array");
  }
};

/// One tensor's info: ggml dims (ne[0] is the contiguous one), type, offset in the data section.
struct gguf_tensor {
  std::vector<std::uint64_t> dims;
  std::uint32_t type = 0;  ///< ggml_type (is_stored_weight_type: F32, F16, BF16, Q4_0, Q8_0, Q3_K-Q6_K)
  std::uint64_t offset = 0, bytes = 0;
  std::uint64_t elements() const noexcept {
    std::uint64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
};

/// A GGUF file held in memory and validated.
class gguf_file {
 public:
  /// The file at `path`, mapped (mapped_file): tensors are read where they lie.
  static gguf_file load(const std::string& path) {
    auto mapped = std::make_shared<const mapped_file>(path);
    const std::string_view bytes = mapped->bytes();
    gguf_file f(std::move(mapped), bytes, path);
    f.is_mapped_ = true;
    return f;
  }
  /// A GGUF held in memory (tests, fuzzing).
  gguf_file(std::string bytes, std::string where)
      : gguf_file(std::make_shared<const std::string>(std::move(bytes)), std::move(where)) {}

 private:
  gguf_file(std::shared_ptr<const std::string> bytes, std::string where)
      : gguf_file(bytes, std::string_view(*bytes), std::move(where)) {}
  // `storage` keeps `bytes` alive (a mapping or a string) for as long as any copy of this file
  gguf_file(std::shared_ptr<const void> storage, std::string_view bytes, std::string where)
      : storage_(std::move(storage)), bytes_(bytes), where_(std::move(where)) {
    if (bytes_.size() >= 4 && bytes_.compare(0, 4, "GGUF") != 0) fail("not a GGUF file (the magic is not \"GGUF\")");
    if (bytes_.size() < 24) fail("truncated: " + std::to_string(bytes_.size()) + " bytes, a GGUF header needs 24");
    at_ = 4;
    version_ = read<std::uint32_t>("the version");
    if (version_ != 2 && version_ != 3)
      fail("GGUF version " + std::to_string(version_) + " is not supported (2 and 3 are)");
    const auto n_tensors = read<std::uint64_t>("the tensor count");
    const auto n_kv = read<std::uint64_t>("the metadata count");
    // every entry takes at least 8 (key length) + 4 bytes: a lying count fails here, not in malloc
    if (n_kv > remaining() / 12 || n_tensors > remaining() / 12)
      fail("truncated or corrupt: the header claims " + std::to_string(n_tensors) + " tensors and " +
           std::to_string(n_kv) + " metadata entries, impossible in the " + std::to_string(remaining()) +
           " bytes that follow");
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      std::string key = read_string("a metadata key");
      const auto type = read<std::uint32_t>("the type of " + key);
      metadata_[key] = read_value(type, key, 0);
    }
    std::uint64_t alignment = 32;
    if (auto it = metadata_.find("general.alignment"); it != metadata_.end()) {
      const long long a = it->second.as_int("general.alignment");
      if (a <= 0 || (a & (a - 1)) != 0 || a > (1 << 20))
        fail("general.alignment must be a power of two in [1, 2^20], found " + std::to_string(a));
      alignment = std::uint64_t(a);
    }
    std::vector<std::string> order;
    for (std::uint64_t i = 0; i < n_tensors; ++i) try {
        std::string name = read_string("a tensor name");
        gguf_tensor t;
        const auto nd = read<std::uint32_t>("the dimension count of " + name);
        if (nd == 0 || nd > 4) fail("tensor '" + name + "' has " + std::to_string(nd) + " dimensions (1 to 4 allowed)");
        std::uint64_t count = 1;
        for (std::uint32_t d = 0; d < nd; ++d) {
          const auto v = read<std::uint64_t>("a dimension of " + name);
          if (v == 0 || count > (std::uint64_t(1) << 40) / v) fail("tensor '" + name + "' has an absurd shape");
          count *= v;
          t.dims.push_back(v);
        }
        t.type = read<std::uint32_t>("the type of " + name);
        t.offset = read<std::uint64_t>("the offset of " + name);
        if (!is_stored_weight_type(t.type))
          fail("tensor '" + name + "' has ggml type " + ggml_type_name(t.type) + " (" + std::to_string(t.type) +
               "); ipa reads F32, F16, BF16, Q4_0, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K (Q3_K_M, Q4_K_M, Q5_K_M files)");
        if (const std::size_t block = layout_of(weight_type(t.type)).elements; t.dims[0] % block != 0)
          fail(std::string(weight_type_name(weight_type(t.type))) + " tensor '" + name + "' has rows of " +
               std::to_string(t.dims[0]) + " weights, not a multiple of its block of " + std::to_string(block));
        t.bytes = count / t.dims[0] * compact_matrix::row_bytes(weight_type(t.type), t.dims[0]);
        if (t.offset % alignment != 0) fail("tensor '" + name + "' is not aligned to " + std::to_string(alignment));
        if (!tensors_.emplace(name, t).second) fail("two tensors are named '" + name + "'");
        order.push_back(name);
      } catch (const io_error& e) {  // a wrong metadata count shows here: say where the reading stood
        throw io_error(std::string(e.what()) + " (in tensor info " + std::to_string(i + 1) + " of " +
                       std::to_string(n_tensors) + ", after the " + std::to_string(n_kv) +
                       " metadata entries the header counts)");
      }
    data_at_ = (at_ + alignment - 1) / alignment * alignment;
    if (data_at_ > bytes_.size()) fail("truncated before the data section");
    const std::uint64_t data_size = bytes_.size() - data_at_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    for (const auto& [name, t] : tensors_) {
      if (t.offset > data_size || t.bytes > data_size - t.offset)
        fail("truncated: tensor '" + name + "' needs bytes [" + std::to_string(t.offset) + ", " +
             std::to_string(t.offset + t.bytes) + ") of a data section of " + std::to_string(data_size));
      spans.emplace_back(t.offset, t.offset + t.bytes);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i)
      if (spans[i].first < spans[i - 1].second) fail("two tensors overlap in the data section");
  }

 public:
  std::uint32_t version() const noexcept { return version_; }
  const std::map<std::string, gguf_value>& metadata() const noexcept { return metadata_; }
  const std::map<std::string, gguf_tensor>& tensors() const noexcept { return tensors_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  const gguf_value& value(const std::string& key) const {
    auto it = metadata_.find(key);
    if (it == metadata_.end()) throw io_error(where_ + ": metadata key '" + key + "' is missing");
    return it->second;
  }

  /// A tensor as floats (dequantised), checking its element count.
  std::vector<float> floats(const std::string& name, std::uint64_t expected) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw io_error(where_ + ": tensor '" + name + "' is missing");
    const gguf_tensor& t = it->second;
    if (t.elements() != expected)
      throw io_error(where_ + ": tensor '" + name + "' has " + std::to_string(t.elements()) + " elements, expected " +
                     std::to_string(expected));
    const compact_matrix m = view(t, t.elements() / t.dims[0], t.dims[0]);
    std::vector<float> out(t.elements());
    for (std::size_t r = 0; r < m.rows; ++r) dequantize_row(m, r, out.data() + r * m.cols);
    return out;
  }

  const std::string& where() const noexcept { return where_; }

  /// A matrix tensor (ggml dims [cols, rows]) as it is stored, seen in place: F32, F16, BF16,
  /// Q4_0, Q8_0, Q4_K or Q6_K (io_error for another shape). Valid while `storage()` lives.
  compact_matrix compact(const std::string& name, std::uint64_t rows, std::uint64_t cols) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw io_error(where_ + ": tensor '" + name + "' is missing");
    const gguf_tensor& t = it->second;
    const bool is_matrix = (t.dims.size() == 2 && t.dims[0] == cols && t.dims[1] == rows) ||
                           (t.dims.size() == 1 && rows == 1 && t.dims[0] == cols);
    if (!is_matrix)
      throw io_error(where_ + ": tensor '" + name + "' has shape " + detail::shape_text(t.dims) + ", expected [" +
                     std::to_string(cols) + ", " + std::to_string(rows) + "]");
    return view(t, rows, cols);
  }
  /// What keeps the bytes that compact() views alive (the mapping, or the bytes given).
  const std::shared_ptr<const void>& storage() const noexcept { return storage_; }
  /// True when storage() is a read-only mapping of the file (load), not bytes in memory.
  bool is_mapped() const noexcept { return is_mapped_; }

 private:
  // t's bytes as a rows x cols matrix (the constructor admits the stored types only)
  compact_matrix view(const gguf_tensor& t, std::uint64_t rows, std::uint64_t cols) const noexcept {
    return {weight_type(t.type), reinterpret_cast<const unsigned char*>(bytes_.data() + data_at_ + t.offset),
            std::size_t(rows), std::size_t(cols)};
  }
  [[noreturn]] void fail(const std::string& why) const { throw io_error(where_ + ": " + why); }
  std::uint64_t remaining() const noexcept { return bytes_.size() - at_; }
  template <class T>
  T read(const std::string& what) {
    if (remaining() < sizeof(T)) fail("truncated: " + what + " runs past the end of the file");
    T v;
    std::memcpy(&v, bytes_.data() + at_, sizeof v);
    at_ += sizeof v;
    return v;
  }
  std::string read_string(const std::string& what) {
    const auto n = read<std::uint64_t>(what + "'s length");
    if (n > remaining())
      fail("truncated: " + what + " claims " + std::to_string(n) + " bytes, " + std::to_string(remaining()) +
           " remain");
    std::string s(bytes_.data() + at_, n);
    at_ += n;
    return s;
  }
  gguf_value read_value(std::uint32_t type, const std::string& key, int depth) {
    gguf_value out;
    out.kind = static_cast<gguf_value::kind_t>(type);
    switch (type) {
      case gguf_value::u8: out.v = std::uint64_t(read<std::uint8_t>(key)); break;
      case gguf_value::i8: out.v = std::int64_t(read<std::int8_t>(key)); break;
      case gguf_value::u16: out.v = std::uint64_t(read<std::uint16_t>(key)); break;
      case gguf_value::i16: out.v = std::int64_t(read<std::int16_t>(key)); break;
      case gguf_value::u32: out.v = std::uint64_t(read<std::uint32_t>(key)); break;
      case gguf_value::i32: out.v = std::int64_t(read<std::int32_t>(key)); break;
      case gguf_value::u64: out.v = read<std::uint64_t>(key); break;
      case gguf_value::i64: out.v = read<std::int64_t>(key); break;
      case gguf_value::f32: out.v = double(read<float>(key)); break;
      case gguf_value::f64: out.v = read<double>(key); break;
      case gguf_value::boolean: {
        const auto b = read<std::uint8_t>(key);
        if (b > 1) fail("metadata '" + key + "' is a bool holding " + std::to_string(b));
        out.v = b == 1;
        break;
      }
      case gguf_value::string: out.v = read_string(key); break;
      case gguf_value::array: {
        if (depth > 4) fail("metadata '" + key + "' nests arrays too deeply");
        const auto elem = read<std::uint32_t>(key + "'s element type");
        const auto n = read<std::uint64_t>(key + "'s length");
        if (n > remaining()) fail("truncated: metadata '" + key + "' claims " + std::to_string(n) + " elements");
        std::vector<gguf_value> items;
        items.reserve(n);
        for (std::uint64_t i = 0; i < n; ++i) items.push_back(read_value(elem, key, depth + 1));
        out.v = std::move(items);
        break;
      }
      default: fail("metadata '" + key + "' has unknown type " + std::to_string(type));
    }
    return out;
  }

  std::shared_ptr<const void> storage_;
  bool is_mapped_ = false;
  std::string_view bytes_;
  std::string where_;
  std::uint64_t at_ = 0, data_at_ = 0;
  std::uint32_t version_ = 0;
  std::map<std::string, gguf_value> metadata_;
  std::map<std::string, gguf_tensor> tensors_;
};

namespace detail {
/// A config read from a GGUF's metadata must be valid and describe no more parameters than the
/// file's tensors hold, before anything of that size is allocated; io_error otherwise.
template <class Config>
void check_config_fits(const gguf_file& f, const Config& c) {
  try {
    c.validate(f.where());
  } catch (const config_error& e) {
    throw io_error(e.what());
  }
  std::uint64_t held = 0;
  for (const auto& [name, t] : f.tensors()) held += t.elements();
  if (c.parameter_count() > held)
    throw io_error(f.where() + ": the metadata describes a model of " + std::to_string(c.parameter_count()) +
                   " parameters, the file's tensors hold " + std::to_string(held) + " values");
}

/// The llama_config of a `llama` GGUF, refusing what ipa's Llama does not implement.
inline llama_config gguf_llama_config(const gguf_file& f) {
  const std::string arch = f.value("general.architecture").as_string("general.architecture");
  if (arch != "llama") throw io_error(f.where() + ": architecture '" + arch + "' is not supported here (llama)");
  auto get = [&](const std::string& key) { return f.value("llama." + key).as_int("llama." + key); };
  llama_config c;
  auto narrow = [&](long long v, const char* what) {
    if (v <= 0 || v > (1 << 20)) throw io_error(f.where() + ": " + what + " = " + std::to_string(v) + " is impossible");
    return int(v);
  };
  c.dim = narrow(get("embedding_length"), "embedding_length");
  c.hidden_dim = narrow(get("feed_forward_length"), "feed_forward_length");
  c.n_layers = narrow(get("block_count"), "block_count");
  c.n_heads = narrow(get("attention.head_count"), "attention.head_count");
  c.n_kv_heads =
      f.has("llama.attention.head_count_kv") ? narrow(get("attention.head_count_kv"), "head_count_kv") : c.n_heads;
  c.seq_len = narrow(get("context_length"), "context_length");
  if (f.has("llama.attention.layer_norm_rms_epsilon"))
    c.norm_eps = float(f.value("llama.attention.layer_norm_rms_epsilon").as_double("layer_norm_rms_epsilon"));
  if (f.has("llama.rope.freq_base")) c.rope_theta = float(f.value("llama.rope.freq_base").as_double("rope.freq_base"));
  auto emb = f.tensors().find("token_embd.weight");
  if (emb == f.tensors().end() || emb->second.dims.size() != 2)
    throw io_error(f.where() + ": no 2-D token_embd.weight");
  c.vocab_size = narrow(static_cast<long long>(emb->second.dims[1]), "the vocabulary size");
  c.shared_classifier = f.tensors().count("output.weight") == 0;
  detail::check_config_fits(f, c);
  // what ipa's Llama does not implement is refused, not ignored
  for (const char* key : {"rope.dimension_count", "attention.key_length", "attention.value_length"})
    if (f.has(std::string("llama.") + key) && get(key) != c.head_size())
      throw io_error(
          f.where() + ": llama." + key + " = " + std::to_string(get(key)) +
          "; ipa implements only whole heads of embedding_length / head_count = " + std::to_string(c.head_size()));
  if (f.has("llama.rope.scaling.type")) {
    const std::string type = f.value("llama.rope.scaling.type").as_string("llama.rope.scaling.type");
    if (type != "none")
      throw io_error(f.where() + ": llama.rope.scaling.type is '" + type + "'; RoPE scaling is not implemented");
  }
  if (f.has("llama.expert_count") && get("expert_count") > 0)
    throw io_error(f.where() + ": llama.expert_count = " + std::to_string(get("expert_count")) +
                   "; mixture-of-experts models are not implemented");
  return c;
}

}  // namespace detail

/// A Llama-architecture GGUF as ipa's weights (ggml's row-major (out, in) tensors map onto
/// llama2.c's layout directly; llama.cpp stores Q/K for interleaved-pair RoPE, as ipa computes it).
inline llama_weights load_gguf_llama(const gguf_file& f) {
  const llama_config c = detail::gguf_llama_config(f);
  llama_weights w(c);
  auto put = [&](const char* slot, std::size_t layer, const std::string& name) {
    const tensor_slot& s = w.slot(slot);
    const auto v = f.floats(name, s.rows * s.cols);
    for (float x : v)
      if (!std::isfinite(x)) throw io_error(f.where() + ": tensor '" + name + "' holds a non-finite value");
    std::copy(v.begin(), v.end(), w.tensor(slot).begin() + std::ptrdiff_t(layer * s.rows * s.cols));
  };
  put("tok_embeddings", 0, "token_embd.weight");
  put("norm", 0, "output_norm.weight");
  if (!c.shared_classifier) put("output", 0, "output.weight");
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    put("attention_norm", l, b + "attn_norm.weight");
    put("wq", l, b + "attn_q.weight");
    put("wk", l, b + "attn_k.weight");
    put("wv", l, b + "attn_v.weight");
    put("wo", l, b + "attn_output.weight");
    put("ffn_norm", l, b + "ffn_norm.weight");
    put("w1", l, b + "ffn_gate.weight");
    put("w2", l, b + "ffn_down.weight");
    put("w3", l, b + "ffn_up.weight");
  }
  return w;
}

/// A Llama-architecture GGUF read where it lies: its matrices compact (F32, F16, BF16, Q4_0,
/// Q8_0, Q3_K, Q4_K, Q5_K, Q6_K, as stored, no copy; their values checked when used, see
/// llama_compact_weights), its norms as floats; the result keeps the file (mapped) alive.
inline llama_compact_weights load_gguf_llama_compact(const gguf_file& f) {
  llama_compact_weights w;
  w.config = detail::gguf_llama_config(f);
  const llama_config& c = w.config;
  const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim;
  auto matrix = [&](const std::string& name, std::size_t rows, std::size_t cols) {
    const compact_matrix m = f.compact(name, rows, cols);
    w.sources.push_back({f.where(), name, m});
    return m;
  };
  auto norm = [&](std::vector<float>& into, const std::string& name) {
    const compact_matrix m = f.compact(name, 1, d);
    detail::require_finite(m, f.where(), name);
    into.resize(into.size() + d);
    dequantize_row(m, 0, into.data() + into.size() - d);
  };
  w.tok_embeddings = matrix("token_embd.weight", std::size_t(c.vocab_size), d);
  if (!c.shared_classifier) w.output = matrix("output.weight", std::size_t(c.vocab_size), d);
  norm(w.norm, "output_norm.weight");
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    llama_compact_weights::layer& layer = w.layers.emplace_back();
    norm(w.attention_norm, b + "attn_norm.weight");
    norm(w.ffn_norm, b + "ffn_norm.weight");
    layer.wq = matrix(b + "attn_q.weight", d, d);
    layer.wk = matrix(b + "attn_k.weight", kv, d);
    layer.wv = matrix(b + "attn_v.weight", kv, d);
    layer.wo = matrix(b + "attn_output.weight", d, d);
    layer.w1 = matrix(b + "ffn_gate.weight", hd, d);
    layer.w2 = matrix(b + "ffn_down.weight", d, hd);
    layer.w3 = matrix(b + "ffn_up.weight", hd, d);
  }
  w.storage = {f.storage()};
  w.storage_is_mapped = f.is_mapped();
  return w;
}

/// The SentencePiece ("llama") tokenizer stored in a GGUF's metadata, as a llama2c_tokenizer
/// (U+2581 becomes a space, as llama2.c's export writes it).
inline llama2c_tokenizer load_gguf_tokenizer(const gguf_file& f) {
  const std::string model = f.value("tokenizer.ggml.model").as_string("tokenizer.ggml.model");
  if (model != "llama")
    throw io_error(f.where() + ": tokenizer.ggml.model '" + model + "' is not the SentencePiece (llama) tokenizer");
  const auto& tokens = f.value("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens");
  const auto& scores = f.value("tokenizer.ggml.scores").as_array("tokenizer.ggml.scores");
  std::vector<std::string> pieces;
  std::vector<float> s;
  for (const auto& t : tokens) {
    const std::string& raw = t.as_string("tokenizer.ggml.tokens[]");
    std::string p;
    p.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581, SentencePiece's space
        p.push_back(' ');
        i += 2;
      } else {
        p.push_back(raw[i]);
      }
    }
    pieces.push_back(std::move(p));
  }
  for (const auto& v : scores) s.push_back(float(v.as_double("tokenizer.ggml.scores[]")));
  for (const auto& [key, want] : {std::pair{"tokenizer.ggml.bos_token_id", llama2c_tokenizer::bos_id},
                                  std::pair{"tokenizer.ggml.eos_token_id", llama2c_tokenizer::eos_id}})
    if (f.has(key) && f.value(key).as_int(key) != want)
      throw io_error(f.where() + ": " + key + " is " + std::to_string(f.value(key).as_int(key)) +
                     "; ipa's SentencePiece tokenizer has BOS = 1 and EOS = 2");
  return llama2c_tokenizer::from_pieces(std::move(pieces), std::move(s), f.where());
}

}  // namespace ipa

namespace ipa {

namespace detail {

// Little-endian bytes of a GGUF file being written.
struct gguf_bytes {
  std::string data;
  template <class T>
  void put(T v) {
    data.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_str(const std::string& s) {
    put(std::uint64_t(s.size()));
    data += s;
  }
};

}  // namespace detail

/// Builds a GGUF v3 file: metadata key/values, then tensors (F32, F16 or Q8_0), data aligned to 32.
class gguf_writer {
 public:
  void u32(const std::string& k, std::uint32_t v) { key(k, gguf_value::u32), kv_.put(v); }
  void f32(const std::string& k, float v) { key(k, gguf_value::f32), kv_.put(v); }
  void str(const std::string& k, const std::string& v) { key(k, gguf_value::string), kv_.put_str(v); }
  void strings(const std::string& k, const std::vector<std::string>& v) {
    array(k, gguf_value::string, v.size());
    for (const auto& s : v) kv_.put_str(s);
  }
  void floats(const std::string& k, const std::vector<float>& v) {
    array(k, gguf_value::f32, v.size());
    for (float x : v) kv_.put(x);
  }
  void ints(const std::string& k, const std::vector<std::int32_t>& v) {
    array(k, gguf_value::i32, v.size());
    for (std::int32_t x : v) kv_.put(x);
  }
  /// A tensor of ggml dims (ne0, the contiguous one, first) stored as `type`; `values` must
  /// outlive save(). Q8_0 rows (ne0) must be a multiple of 32.
  void tensor(const std::string& name, std::vector<std::uint64_t> dims, std::span<const float> values,
              weight_type type = weight_type::f32) {
    if (type != weight_type::f32 && type != weight_type::f16 && type != weight_type::q8_0)
      throw shape_error(std::string("gguf_writer: tensor '") + name + "': ipa writes F32, F16 and Q8_0, not " +
                        weight_type_name(type));
    if (type == weight_type::q8_0 && dims[0] % q8_0_block != 0)
      throw shape_error("gguf_writer: Q8_0 tensor '" + name + "' needs rows of a multiple of 32, found " +
                        std::to_string(dims[0]));
    tensors_.push_back({name, std::move(dims), values, type});
  }

  /// Writes the file atomically.
  void save(const std::string& path) const {
    detail::gguf_bytes out;
    out.data = "GGUF";
    out.put(std::uint32_t(3));
    out.put(std::uint64_t(tensors_.size()));
    out.put(n_kv_);
    out.data += kv_.data;
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      out.put_str(t.name);
      out.put(std::uint32_t(t.dims.size()));
      for (auto d : t.dims) out.put(d);
      out.put(std::uint32_t(t.type));
      out.put(offset);
      offset += (t.values.size() / t.dims[0] * compact_matrix::row_bytes(t.type, t.dims[0]) + 31) / 32 * 32;
    }
    out.data.append((32 - out.data.size() % 32) % 32, '\0');
    for (const auto& t : tensors_) {
      const std::size_t start = out.data.size();
      if (t.type == weight_type::q8_0) {
        const std::size_t cols = t.dims[0], row_bytes = compact_matrix::row_bytes(t.type, cols);
        for (std::size_t r = 0; r < t.values.size() / cols; ++r) {
          out.data.append(row_bytes, '\0');
          quantize_row_q8_0(t.values.data() + r * cols, cols,
                            reinterpret_cast<unsigned char*>(out.data.data() + out.data.size() - row_bytes));
        }
      }
      for (float v : t.values) {
        if (t.type == weight_type::f16) out.put(to_f16(v));
        else if (t.type == weight_type::f32) out.put(v);
      }
      out.data.append((32 - (out.data.size() - start) % 32) % 32, '\0');
    }
    write_file_atomic(path, out.data);
  }

 private:
  void key(const std::string& k, std::uint32_t type) {
    ++n_kv_;
    kv_.put_str(k);
    kv_.put(type);
  }
  void array(const std::string& k, std::uint32_t elem, std::size_t n) {
    key(k, gguf_value::array);
    kv_.put(elem);
    kv_.put(std::uint64_t(n));
  }
  struct tensor_out {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::span<const float> values;
    weight_type type;
  };
  detail::gguf_bytes kv_;
  std::uint64_t n_kv_ = 0;
  std::vector<tensor_out> tensors_;
};

/// Writes a Llama model (and its SentencePiece tokenizer, when given) as GGUF v3 with llama.cpp's
/// tensor names and metadata keys: matrices as `type` (F32, F16 or Q8_0; a Q8_0 matrix whose rows
/// are not a multiple of 32 is written F16, as llama-quantize falls back), norms F32 as llama.cpp
/// keeps them. Written atomically. A tied classifier is written out as output.weight too.
inline void save_gguf_llama(const std::string& path, const llama_weights& w, const llama2c_tokenizer* tok = nullptr,
                            weight_type type = weight_type::f32, const std::string& name = "ipa") {
  const llama_config& c = w.config();
  if (c.extra_tokens != 0)
    throw config_error("save_gguf_llama: a model with input-only tokens (Quark's) has no GGUF equivalent");
  gguf_writer g;
  auto add = [&](const std::string& n, const char* slot, std::size_t layer, bool is_norm) {
    const tensor_slot& s = w.slot(slot);
    const std::size_t size = (std::string(slot) == "tok_embeddings" ? std::size_t(c.vocab_size) : s.rows) * s.cols;
    const auto part = w.tensor(slot).subspan(layer * s.rows * s.cols, size);
    const weight_type as = is_norm                                                 ? weight_type::f32
                           : type == weight_type::q8_0 && s.cols % q8_0_block != 0 ? weight_type::f16
                                                                                   : type;
    g.tensor(n, s.rows == 1 ? std::vector<std::uint64_t>{s.cols} : std::vector<std::uint64_t>{s.cols, size / s.cols},
             part, as);
  };
  add("token_embd.weight", "tok_embeddings", 0, false);
  add("output_norm.weight", "norm", 0, true);
  add("output.weight", c.shared_classifier ? "tok_embeddings" : "output", 0, false);
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_q.weight", "wq", l, false);
    add(b + "attn_k.weight", "wk", l, false);
    add(b + "attn_v.weight", "wv", l, false);
    add(b + "attn_output.weight", "wo", l, false);
    add(b + "attn_norm.weight", "attention_norm", l, true);
    add(b + "ffn_gate.weight", "w1", l, false);
    add(b + "ffn_down.weight", "w2", l, false);
    add(b + "ffn_up.weight", "w3", l, false);
    add(b + "ffn_norm.weight", "ffn_norm", l, true);
  }
  g.str("general.architecture", "llama");
  g.str("general.name", name);
  g.u32("general.alignment", 32);
  g.u32("llama.context_length", std::uint32_t(c.seq_len));
  g.u32("llama.embedding_length", std::uint32_t(c.dim));
  g.u32("llama.feed_forward_length", std::uint32_t(c.hidden_dim));
  g.u32("llama.block_count", std::uint32_t(c.n_layers));
  g.u32("llama.attention.head_count", std::uint32_t(c.n_heads));
  g.u32("llama.attention.head_count_kv", std::uint32_t(c.n_kv_heads));
  g.u32("llama.rope.dimension_count", std::uint32_t(c.head_size()));
  g.f32("llama.rope.freq_base", c.rope_theta);
  g.f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  if (tok) {
    const std::size_t V = tok->vocab_size();
    if (V != std::size_t(c.vocab_size))
      throw shape_error("save_gguf_llama: the tokenizer has " + std::to_string(V) + " tokens, the model " +
                        std::to_string(c.vocab_size));
    std::vector<std::string> pieces(V);
    std::vector<float> scores(V);
    std::vector<std::int32_t> types(V);  // 1 normal, 2 unknown, 3 control, 6 byte
    for (std::size_t i = 0; i < V; ++i) {
      std::string p = tok->piece(token_id(i));
      types[i] = i == 0 ? 2 : i < 3 ? 3 : (p.size() == 6 && p.rfind("<0x", 0) == 0) ? 6 : 1;
      if (types[i] == 3) {  // llama2.c stores "\n<s>\n"; SentencePiece (and llama.cpp's GGUFs) "<s>"
        p.erase(0, p.find_first_not_of('\n'));
        p.erase(p.find_last_not_of('\n') + 1);
      }
      for (char ch : p)
        pieces[i] += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);  // SentencePiece's space
      scores[i] = tok->score(token_id(i));
    }
    g.str("tokenizer.ggml.model", "llama");
    g.strings("tokenizer.ggml.tokens", pieces);
    g.floats("tokenizer.ggml.scores", scores);
    g.ints("tokenizer.ggml.token_type", types);
    g.u32("tokenizer.ggml.bos_token_id", std::uint32_t(llama2c_tokenizer::bos_id));
    g.u32("tokenizer.ggml.eos_token_id", std::uint32_t(llama2c_tokenizer::eos_id));
    g.u32("tokenizer.ggml.unknown_token_id", 0);
  }
  g.save(path);
}

}  // namespace ipa
