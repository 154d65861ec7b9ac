// SPDX-License-Identifier: MIT
// Llama architecture hyper-parameters and weights: in one f32 buffer in llama2.c's order, or
// compact as a file stores them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/compact_matrix.hpp"
#include "ipa/core/error.hpp"
#include "ipa/model/flat_weights.hpp"

namespace ipa {

/// Hyper-parameters of a Llama-architecture transformer (RMSNorm, RoPE, GQA, SwiGLU).
struct llama_config {
  int dim = 0;         ///< model width
  int hidden_dim = 0;  ///< SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;     ///< query heads
  int n_kv_heads = 0;  ///< key/value heads (grouped-query attention when < n_heads)
  int vocab_size = 0;
  int seq_len = 0;         ///< context length: the KV cache holds at most this many positions
  int extra_tokens = 0;    ///< input-only ids [vocab_size, vocab_size + extra_tokens) the model reads but
                           ///< never predicts (Quark's reward tokens): extra rows of tok_embeddings
  float norm_eps = 1e-5f;  ///< RMSNorm epsilon
  float rope_theta = 10000.0f;
  bool shared_classifier = true;  ///< output matrix is tok_embeddings (tied)

  int head_size() const noexcept { return dim / n_heads; }
  int kv_dim() const noexcept { return head_size() * n_kv_heads; }
  /// The RoPE table, (seq_len, head_size / 2) cosines and sines, as llama2.c computes it:
  /// angle = pos * theta^(-2i / head_size) on pair i.
  template <class T>
  void rope_table(std::vector<T>& cos, std::vector<T>& sin) const {
    const int half = head_size() / 2;
    cos.resize(std::size_t(seq_len) * std::size_t(half));
    sin.resize(cos.size());
    // as ggml_rope computes the angles (llama.cpp is the oracle for GGUF models): in float, each
    // pair's from the last one's times theta^(-2 / head_size)
    const float theta_scale = std::pow(float(rope_theta), -2.0f / float(head_size()));
    for (int p = 0; p < seq_len; ++p) {
      float angle = float(p);
      for (int i = 0; i < half; ++i) {
        cos[std::size_t(p) * std::size_t(half) + std::size_t(i)] = T(std::cos(angle));
        sin[std::size_t(p) * std::size_t(half) + std::size_t(i)] = T(std::sin(angle));
        angle *= theta_scale;
      }
    }
  }
  /// Ids the model reads: the vocabulary plus the input-only tokens.
  int input_vocab() const noexcept { return vocab_size + extra_tokens; }

  /// Throws config_error unless the numbers describe a buildable model.
  void validate(const std::string& where = "llama_config") const {
    auto fail = [&](const std::string& what) { throw config_error(where + ": " + what); };
    constexpr int limit = 1 << 20;
    auto check = [&](int v, const char* name) {
      if (v <= 0 || v > limit)
        fail(std::string(name) + " must be in [1, " + std::to_string(limit) + "], found " + std::to_string(v));
    };
    check(dim, "dim");
    check(hidden_dim, "hidden_dim");
    check(n_layers, "n_layers");
    check(n_heads, "n_heads");
    check(n_kv_heads, "n_kv_heads");
    check(vocab_size, "vocab_size");
    check(seq_len, "seq_len");
    if (dim % n_heads != 0)
      fail("dim (" + std::to_string(dim) + ") must be a multiple of n_heads (" + std::to_string(n_heads) + ")");
    if (n_heads % n_kv_heads != 0)
      fail("n_heads (" + std::to_string(n_heads) + ") must be a multiple of n_kv_heads (" + std::to_string(n_kv_heads) +
           ")");
    if (head_size() % 2 != 0) fail("head size dim/n_heads must be even for RoPE, found " + std::to_string(head_size()));
    if (extra_tokens < 0 || extra_tokens > limit) fail("extra_tokens must be in [0, " + std::to_string(limit) + "]");
    if (!(norm_eps > 0.0f) || !std::isfinite(norm_eps)) fail("norm_eps must be positive and finite");
    if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta)) fail("rope_theta must be positive and finite");
  }

  /// Number of weights, in the order of llama2.c's legacy export.
  std::uint64_t parameter_count() const noexcept {
    const std::uint64_t d = dim, h = hidden_dim, L = n_layers, V = vocab_size, kv = kv_dim();
    std::uint64_t n = (V + std::uint64_t(extra_tokens)) * d + L * (d + d * d + 2 * kv * d + d * d + d + 3 * h * d) + d;
    if (!shared_classifier) n += V * d;
    return n;
  }
};

/// Where each tensor of a Llama model sits in one flat buffer, in llama2.c's order.
inline std::vector<tensor_slot> llama_layout(const llama_config& config) {
  config.validate();
  const std::size_t d = config.dim, h = config.hidden_dim, L = config.n_layers, V = config.vocab_size,
                    kv = config.kv_dim();
  std::vector<tensor_slot> slots;
  std::size_t at = 0;
  auto add = [&](const char* name, std::size_t layers, std::size_t rows, std::size_t cols) {
    slots.push_back({name, at, rows, cols, layers});
    at += layers * rows * cols;
  };
  add("tok_embeddings", 1, V + std::size_t(config.extra_tokens), d);
  add("attention_norm", L, 1, d);
  add("wq", L, d, d);
  add("wk", L, kv, d);
  add("wv", L, kv, d);
  add("wo", L, d, d);
  add("ffn_norm", L, 1, d);
  add("w1", L, h, d);
  add("w2", L, d, h);
  add("w3", L, h, d);
  add("norm", 1, 1, d);
  if (!config.shared_classifier) add("output", 1, V, d);
  return slots;
}

/// Which elements of a head RoPE rotates together: interleaved pairs (2i, 2i + 1), as llama2.c
/// and GGUF files store q/k for, or halves (i, i + head_size / 2), Hugging Face's rotate_half.
/// Both rotate pair i by pos * theta^(-2i / head_size); they differ only in the rows' order.
enum class rope_pairs { interleaved, halves };

/// A Llama model's weights as a file stores them (a mapped GGUF, llama2.c checkpoint or Hugging
/// Face folder): the matrices compact (F32, F16, BF16, Q4_0, Q8_0, Q3_K to Q6_K) and read in place,
/// the norms as floats. `storage` keeps the matrices' bytes alive.
///
/// The loaders check a file's structure (every offset, size and type) and its norms, but not the
/// values of its matrices: that would read the whole file once more before the first token (a
/// quarter of a 110M .bin's start-up). A non-finite weight makes every logit it reaches
/// non-finite (NaN and Inf survive every product, and the quantized inputs carry them in their
/// scales), so llama_model checks each step's logits and, when one is not finite, names the
/// matrix from `sources` (require_finite below).
struct llama_compact_weights {
  struct layer {
    compact_matrix wq, wk, wv, wo, w1, w2, w3;
  };
  llama_config config;
  compact_matrix tok_embeddings;  ///< (input_vocab, dim)
  compact_matrix output;          ///< (vocab, dim); rows == 0 when the classifier is tok_embeddings
  std::vector<layer> layers;
  std::vector<float> attention_norm, ffn_norm, norm;  ///< (L, dim), (L, dim), (dim)
  rope_pairs rope = rope_pairs::interleaved;          ///< how wq's and wk's rows are ordered
  std::vector<std::shared_ptr<const void>> storage;   ///< the files (a sharded folder: several)
  /// True when `storage` is read-only file mappings: a model that copies a matrix elsewhere may
  /// hand its pages back (they read again from the file), as llama_model does for Q8_0 and Q4_0 ones.
  bool storage_is_mapped = false;
  /// Each matrix with the file and the name it has there, for messages.
  struct source {
    std::string where, name;
    compact_matrix matrix;
  };
  std::vector<source> sources;
};

/// Throws io_error naming the first of w's matrices (by its `sources`) that holds a non-finite
/// value (quantized: a non-finite scale); returns when all are finite.
inline void require_finite(const llama_compact_weights& w) {
  for (const llama_compact_weights::source& s : w.sources) detail::require_finite(s.matrix, s.where, s.name);
}

/// All weights of a Llama model in one contiguous buffer (llama2.c's order).
class llama_weights : public detail::flat_weights<llama_config> {
 public:
  llama_weights() = default;
  /// Zeros.
  explicit llama_weights(const llama_config& config) : flat_weights("llama_weights", config, llama_layout(config)) {}
  /// Takes `data` in llama_layout(config)'s order; throws shape_error when its size differs.
  llama_weights(const llama_config& config, std::vector<float> data)
      : flat_weights("llama_weights", config, llama_layout(config), std::move(data)) {}

  /// Weights drawn from N(0, 0.02) (norm weights 1), for benchmarks and tests of shapes.
  static llama_weights random(const llama_config& config, std::uint64_t seed) {
    llama_weights w(config);
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (auto& v : w.data_) v = normal(gen);
    for (const char* name : {"attention_norm", "ffn_norm", "norm"}) {
      auto s = w.tensor(name);
      std::fill(s.begin(), s.end(), 1.0f);
    }
    return w;
  }

  /// A fresh adapter: N(0, 0.02) weights, norms 1, and a separate classifier of zeros, so its
  /// logits are 0 everywhere and a tailored policy starts exactly equal to the base.
  static llama_weights zero_output_adapter(llama_config config, std::uint64_t seed) {
    config.shared_classifier = false;
    llama_weights w = random(config, seed);
    auto out = w.tensor("output");
    std::fill(out.begin(), out.end(), 0.0f);
    return w;
  }

  /// A copy with `k` more input-only tokens (Quark's reward tokens): each new embedding row is
  /// drawn from N(mean, std) of the existing rows, per dimension. Predictions are unchanged.
  llama_weights with_input_tokens(int k, std::uint64_t seed) const {
    if (k < 0) throw config_error("llama_weights::with_input_tokens: k must be >= 0, found " + std::to_string(k));
    llama_config c = config_;
    c.extra_tokens += k;
    llama_weights out(c);
    const std::size_t d = c.dim, rows = std::size_t(config_.input_vocab());
    const auto old_emb = tensor("tok_embeddings");
    // everything after tok_embeddings keeps its order: copy the two parts around the new rows
    std::copy(old_emb.begin(), old_emb.end(), out.data_.begin());
    std::copy(data_.begin() + std::ptrdiff_t(old_emb.size()), data_.end(),
              out.data_.begin() + std::ptrdiff_t(old_emb.size() + std::size_t(k) * d));
    std::mt19937_64 gen(seed);
    for (std::size_t j = 0; j < d; ++j) {
      double sum = 0, sq = 0;
      for (std::size_t r = 0; r < rows; ++r) sum += old_emb[r * d + j];
      const double mean = sum / double(rows);
      for (std::size_t r = 0; r < rows; ++r) sq += (old_emb[r * d + j] - mean) * (old_emb[r * d + j] - mean);
      std::normal_distribution<double> normal(mean, std::sqrt(sq / double(rows)));
      for (int r = 0; r < k; ++r) out.data_[(rows + std::size_t(r)) * d + j] = static_cast<float>(normal(gen));
    }
    return out;
  }

  // Hot-path accessors: pointer to layer l's slice.
  const float* tok_embeddings() const noexcept { return at(0, 0); }
  const float* attention_norm(int l) const noexcept { return at(1, l); }
  const float* wq(int l) const noexcept { return at(2, l); }
  const float* wk(int l) const noexcept { return at(3, l); }
  const float* wv(int l) const noexcept { return at(4, l); }
  const float* wo(int l) const noexcept { return at(5, l); }
  const float* ffn_norm(int l) const noexcept { return at(6, l); }
  const float* w1(int l) const noexcept { return at(7, l); }
  const float* w2(int l) const noexcept { return at(8, l); }
  const float* w3(int l) const noexcept { return at(9, l); }
  const float* norm() const noexcept { return at(10, 0); }
  /// (V, d): the first V rows of tok_embeddings when shared (input-only rows are never predicted).
  const float* classifier() const noexcept { return config_.shared_classifier ? tok_embeddings() : at(11, 0); }

 private:
  const float* at(std::size_t slot, int layer) const noexcept {
    const tensor_slot& s = slots_[slot];
    return data_.data() + s.offset + static_cast<std::size_t>(layer) * s.rows * s.cols;
  }
};

}  // namespace ipa
