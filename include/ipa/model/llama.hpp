// SPDX-License-Identifier: MIT
// The Llama architecture (RMSNorm, RoPE on interleaved pairs, grouped-query attention, SwiGLU)
// as a batched, incremental next-token policy with a preallocated KV cache.
//
// Shapes: B = batch rows, n = tokens fed in one call (any mix of rows), d = dim,
// kv = kv_dim, h = hidden_dim, V = vocab, S = positions the cache holds. Row-major throughout.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/types.hpp"
#include "ipa/model/attention.hpp"
#include "ipa/model/kv_cache.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

/// Decoding state of a batch: the KV caches and scratch space that is grown once and then
/// reused (no allocation per token).
struct llama_state : kv_cache_state {
  std::vector<float> x, xb, qkv, att, h13, hb, logits_x;
};

/// A Llama-architecture transformer over llama_weights.
class llama_model {
 public:
  using state_type = llama_state;

  explicit llama_model(llama_weights weights) : w_(std::move(weights)) {
    const llama_config& c = w_.config();
    c.validate();
    attention_ = {std::size_t(c.n_heads), std::size_t(c.n_kv_heads), std::size_t(c.head_size())};
    pack();
    // RoPE table as llama2.c computes it: angle = pos * theta^(-2i/head_size) on pair i.
    const int half = c.head_size() / 2;
    rope_cos_.resize(std::size_t(c.seq_len) * half);
    rope_sin_.resize(rope_cos_.size());
    for (int p = 0; p < c.seq_len; ++p)
      for (int i = 0; i < half; ++i) {
        const double freq = std::pow(double(c.rope_theta), -2.0 * i / c.head_size());
        rope_cos_[std::size_t(p) * half + i] = static_cast<float>(std::cos(p * freq));
        rope_sin_[std::size_t(p) * half + i] = static_cast<float>(std::sin(p * freq));
      }
  }

  const llama_config& config() const noexcept { return w_.config(); }
  const llama_weights& weights() const noexcept { return w_; }
  std::size_t vocab_size() const noexcept { return std::size_t(w_.config().vocab_size); }
  std::size_t context_length() const noexcept { return std::size_t(w_.config().seq_len); }

  /// A state for `batch` rows holding up to `capacity` positions each (default: the context).
  llama_state new_state(int batch, int capacity = 0) const {
    const llama_config& c = w_.config();
    llama_state s;
    detail::init_kv_cache(s, batch, capacity, c.seq_len, c.n_layers, std::size_t(c.kv_dim()), "llama_model");
    return s;
  }

  /// Feeds n tokens: token i goes to row rows[i] at that row's next position (tokens of one row
  /// in order). Writes next-token logits for the items listed in `logit_items` into `logits`
  /// (logit_items.size() x V). Throws shape_error when a row would outgrow its cache.
  void forward(llama_state& s, std::span<const int> rows, std::span<const token_id> tokens,
               std::span<const std::size_t> logit_items, std::span<float> logits) const {
    const llama_config& c = w_.config();
    const std::size_t n = tokens.size(), d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim, V = c.vocab_size;
    detail::place_tokens(s, rows, tokens, c.input_vocab(), logit_items, logits.size(), V, "llama_model");
    grow(s, n);
    const std::vector<int>& pos = s.pos;

    float* x = s.x.data();
    for (std::size_t i = 0; i < n; ++i)
      std::copy_n(w_.tok_embeddings() + std::size_t(tokens[i]) * d, d, x + i * d);

    const std::size_t qkv_w = d + 2 * kv;
    for (int l = 0; l < c.n_layers; ++l) {
      const layer_kernels& lk = layers_[l];
      // attention block: one product for Q|K|V, RoPE, append K/V to the cache, attend
      rmsnorm(s.xb.data(), x, w_.attention_norm(l), n, d);
      matmul(s.qkv.data(), qkv_w, s.xb.data(), d, n, lk.qkv);
      for (std::size_t i = 0; i < n; ++i) {
        float* q = s.qkv.data() + i * qkv_w;
        rope(q, d, pos[i]);
        rope(q + d, kv, pos[i]);
        std::copy_n(q + d, kv, s.key_cache.data() + s.offset(l, rows[i], pos[i]));
        std::copy_n(q + d + kv, kv, s.value_cache.data() + s.offset(l, rows[i], pos[i]));
      }
      detail::cached_attention(attention_, s.qkv.data(), rows.data(), pos.data(), n,
                               s.key_cache.data() + s.offset(l, 0, 0),
                               s.value_cache.data() + s.offset(l, 0, 0), std::size_t(s.capacity),
                               s.scores.data(), s.att.data());
      matmul(s.xb.data(), d, s.att.data(), d, n, lk.wo);
      for (std::size_t j = 0; j < n * d; ++j) x[j] += s.xb[j];
      // SwiGLU feed-forward block: w2(silu(w1 x) * w3 x), with W1|W3 as one product
      rmsnorm(s.xb.data(), x, w_.ffn_norm(l), n, d);
      matmul(s.h13.data(), 2 * hd, s.xb.data(), d, n, lk.w13);
      for (std::size_t i = 0; i < n; ++i) {  // vectorised: a scalar exp here was a serial part of every step
        const float* h = s.h13.data() + i * 2 * hd;
        silu_mul({h, hd}, {h + hd, hd}, {s.hb.data() + i * hd, hd});
      }
      matmul(s.xb.data(), d, s.hb.data(), hd, n, lk.w2);
      for (std::size_t j = 0; j < n * d; ++j) x[j] += s.xb[j];
    }
    for (std::size_t i = 0; i < n; ++i) s.length[rows[i]] = pos[i] + 1;

    const std::size_t m = logit_items.size();
    if (m == 0) return;
    s.logits_x.resize(m * d);
    for (std::size_t j = 0; j < m; ++j)
      rmsnorm(s.logits_x.data() + j * d, x + logit_items[j] * d, w_.norm(), 1, d);
    matmul(logits.data(), V, s.logits_x.data(), d, m, classifier_);
  }

  /// Feeds each row's whole prompt (prompts.size() == batch rows, each non-empty, rows start
  /// empty) and writes the logits after each prompt's last token (B x V).
  template <class Prompts>
  void prefill(llama_state& s, const Prompts& prompts, std::span<float> logits) const {
    std::vector<int> rows;
    std::vector<token_id> tokens;
    std::vector<std::size_t> last;
    detail::flatten_prompts(s, prompts, rows, tokens, last, "llama_model");
    forward(s, rows, tokens, last, logits);
  }

  /// One decoding step: feeds tokens[i] to rows[i] and writes their next-token logits (n x V).
  void step(llama_state& s, std::span<const int> rows, std::span<const token_id> tokens,
            std::span<float> logits) const {
    s.items.resize(tokens.size());
    for (std::size_t i = 0; i < s.items.size(); ++i) s.items[i] = i;
    forward(s, rows, tokens, s.items, logits);
  }

 private:
  void grow(llama_state& s, std::size_t n) const {
    const llama_config& c = w_.config();
    const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim;
    if (s.x.size() >= n * d) return;
    s.x.resize(n * d);
    s.xb.resize(n * d);
    s.qkv.resize(n * (d + 2 * kv));
    s.att.resize(n * d);
    s.h13.resize(n * 2 * hd);
    s.hb.resize(n * hd);
    s.scores.resize(n * c.n_heads * std::size_t(s.capacity));
  }

  // out = x * w / sqrt(mean(x^2) + eps), row by row
  void rmsnorm(float* out, const float* x, const float* weight, std::size_t n, std::size_t d) const noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      const float* xi = x + i * d;
      float ss = 0.0f;
      for (std::size_t j = 0; j < d; ++j) ss += xi[j] * xi[j];
      const float scale = 1.0f / std::sqrt(ss / float(d) + w_.config().norm_eps);
      for (std::size_t j = 0; j < d; ++j) out[i * d + j] = weight[j] * (scale * xi[j]);
    }
  }

  // Rotates interleaved pairs (v[2i], v[2i+1]) of every head by pos * theta^(-2i/head_size).
  void rope(float* v, std::size_t width, int p) const noexcept {
    const std::size_t hs = w_.config().head_size(), half = hs / 2;
    const float* cs = rope_cos_.data() + std::size_t(p) * half;
    const float* sn = rope_sin_.data() + std::size_t(p) * half;
    for (std::size_t h0 = 0; h0 < width; h0 += hs)
      for (std::size_t i = 0; i < half; ++i) {
        const float a = v[h0 + 2 * i], b = v[h0 + 2 * i + 1];
        v[h0 + 2 * i] = a * cs[i] - b * sn[i];
        v[h0 + 2 * i + 1] = a * sn[i] + b * cs[i];
      }
  }

  // Weights repacked for matmul (see packed_matrix), with the projections that read the same
  // input fused: Q|K|V and W1|W3.
  struct layer_kernels {
    packed_matrix qkv, wo, w13, w2;
  };
  void pack() {
    const llama_config& c = w_.config();
    const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim;
    layers_.clear();
    layers_.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
      layer_kernels& k = layers_[l];
      k.qkv = packed_matrix({{w_.wq(l), d, d}, {w_.wk(l), d, kv}, {w_.wv(l), d, kv}}, d);
      k.wo = packed_matrix(w_.wo(l), d, d, d);
      k.w13 = packed_matrix({{w_.w1(l), d, hd}, {w_.w3(l), d, hd}}, d);
      k.w2 = packed_matrix(w_.w2(l), hd, d, hd);
    }
    classifier_ = packed_matrix(w_.classifier(), d, std::size_t(c.vocab_size), d);
  }

  llama_weights w_;
  detail::attention_shape attention_;
  std::vector<layer_kernels> layers_;
  packed_matrix classifier_;
  std::vector<float> rope_cos_, rope_sin_;
};

}  // namespace ipa
