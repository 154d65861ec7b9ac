// SPDX-License-Identifier: MIT
// The GPT-2 architecture (LayerNorm, learned positions, GELU, fused QKV with biases, tied output)
// as a batched, incremental next-token policy with a preallocated KV cache. It shares the
// matmul, the cached attention and the KV-cache bookkeeping with llama_model.
#pragma once
#include <cstddef>
#include <span>
#include <vector>

#include "ipa/core/matmul.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/policy.hpp"
#include "ipa/model/attention.hpp"
#include "ipa/model/gpt2_weights.hpp"
#include "ipa/model/kv_cache.hpp"
#include "ipa/model/layers.hpp"

namespace ipa {

/// Decoding state of a GPT-2 batch: KV caches plus reusable scratch.
struct gpt2_state : kv_cache_state {
  std::vector<float> x, xb, qkv, att, h, logits_x;
};

/// A GPT-2-architecture transformer over gpt2_weights; a Policy.
class gpt2_model {
 public:
  using state_type = gpt2_state;

  explicit gpt2_model(gpt2_weights weights) : w_(std::move(weights)) {
    const gpt2_config& c = w_.config();
    c.validate();
    attention_ = {std::size_t(c.n_heads), std::size_t(c.n_heads), std::size_t(c.head_size())};
    const std::size_t d = c.dim, hd = c.hidden_dim;
    for (int l = 0; l < c.n_layers; ++l)
      layers_.push_back({packed_matrix(w_.layer("attn.c_attn.weight", l), d, 3 * d, d),
                         packed_matrix(w_.layer("attn.c_proj.weight", l), d, d, d),
                         packed_matrix(w_.layer("mlp.c_fc.weight", l), d, hd, d),
                         packed_matrix(w_.layer("mlp.c_proj.weight", l), hd, d, hd)});
    classifier_ = packed_matrix(w_.tensor("wte").data(), d, std::size_t(c.vocab_size), d);
  }

  const gpt2_config& config() const noexcept { return w_.config(); }
  const gpt2_weights& weights() const noexcept { return w_; }
  std::size_t vocab_size() const noexcept { return std::size_t(w_.config().vocab_size); }
  std::size_t context_length() const noexcept { return std::size_t(w_.config().seq_len); }

  /// What the KV caches of states made from now on store (as llama_model::set_kv_cache_type).
  void set_kv_cache_type(kv_cache_type type) noexcept { kv_type_ = type; }

  gpt2_state new_state(int batch, int capacity = 0) const {
    const gpt2_config& c = w_.config();
    gpt2_state s;
    detail::init_kv_cache(s, batch, capacity, c.seq_len, c.n_layers, std::size_t(c.n_heads),
                          std::size_t(c.dim / c.n_heads), kv_type_, "gpt2_model");
    return s;
  }

  /// Feeds n tokens (token i to row rows[i] at its next position) and writes the next-token
  /// logits of the items in `logit_items` (logit_items.size() x V); as llama_model::forward.
  void forward(gpt2_state& s, std::span<const int> rows, std::span<const token_id> tokens,
               std::span<const std::size_t> logit_items, std::span<float> logits) const {
    const gpt2_config& c = w_.config();
    const std::size_t n = tokens.size(), d = c.dim, hd = c.hidden_dim, V = c.vocab_size;
    detail::place_tokens(s, rows, tokens, c.vocab_size, logit_items, logits.size(), V, "gpt2_model");
    grow(s, n);
    const std::vector<int>& pos = s.pos;
    const float *wte = w_.tensor("wte").data(), *wpe = w_.tensor("wpe").data();
    float* x = s.x.data();
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < d; ++j)
        x[i * d + j] = wte[std::size_t(tokens[i]) * d + j] + wpe[std::size_t(pos[i]) * d + j];

    for (int l = 0; l < c.n_layers; ++l) {
      const layer_kernels& lk = layers_[std::size_t(l)];
      // attention block: Q|K|V + bias, append K/V to the cache, attend, project back
      norm(s.xb.data(), x, "ln_1", l, n);
      linear(s.qkv.data(), s.xb.data(), n, lk.qkv, "attn.c_attn.bias", l);
      for (std::size_t i = 0; i < n; ++i) {
        const float* q = s.qkv.data() + i * 3 * d;
        s.append(std::size_t(l), rows[i], pos[i], q + d, q + 2 * d);
      }
      detail::cached_attention(attention_, s.qkv.data(), rows.data(), pos.data(), n, s, std::size_t(l), s.att.data());
      linear(s.xb.data(), s.att.data(), n, lk.proj, "attn.c_proj.bias", l);
      for (std::size_t j = 0; j < n * d; ++j) x[j] += s.xb[j];
      // feed-forward block: c_proj(gelu(c_fc(ln_2(x))))
      norm(s.xb.data(), x, "ln_2", l, n);
      linear(s.h.data(), s.xb.data(), n, lk.fc, "mlp.c_fc.bias", l);
      for (std::size_t j = 0; j < n * hd; ++j) s.h[j] = detail::gelu(s.h[j], c.gelu);
      linear(s.xb.data(), s.h.data(), n, lk.fc_proj, "mlp.c_proj.bias", l);
      for (std::size_t j = 0; j < n * d; ++j) x[j] += s.xb[j];
    }
    for (std::size_t i = 0; i < n; ++i) s.length[std::size_t(rows[i])] = pos[i] + 1;

    const std::size_t m = logit_items.size();
    if (m == 0) return;
    s.logits_x.resize(m * d);
    for (std::size_t j = 0; j < m; ++j)
      detail::layer_norm(s.logits_x.data() + j * d, static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                         x + logit_items[j] * d, w_.tensor("ln_f.weight").data(), w_.tensor("ln_f.bias").data(), 1, d,
                         c.norm_eps);
    matmul(logits.data(), V, s.logits_x.data(), d, m, classifier_);
  }

  /// Feeds each row's whole prompt and writes the logits after its last token (B x V).
  template <class Prompts>
  void prefill(gpt2_state& s, const Prompts& prompts, std::span<float> logits) const {
    std::vector<int> rows;
    std::vector<token_id> tokens;
    std::vector<std::size_t> last;
    detail::flatten_prompts(s, prompts, rows, tokens, last, "gpt2_model");
    forward(s, rows, tokens, last, logits);
  }

  /// One decoding step: feeds tokens[i] to rows[i] and writes their next-token logits (n x V).
  void step(gpt2_state& s, std::span<const int> rows, std::span<const token_id> tokens, std::span<float> logits) const {
    s.items.resize(tokens.size());
    for (std::size_t i = 0; i < s.items.size(); ++i) s.items[i] = i;
    forward(s, rows, tokens, s.items, logits);
  }

 private:
  void grow(gpt2_state& s, std::size_t n) const {
    const gpt2_config& c = w_.config();
    const std::size_t d = c.dim;
    if (s.x.size() >= n * d) return;
    s.x.resize(n * d);
    s.xb.resize(n * d);
    s.qkv.resize(n * 3 * d);
    s.att.resize(n * d);
    s.h.resize(n * std::size_t(c.hidden_dim));
    s.scores.resize(n * std::size_t(c.n_heads) * std::size_t(s.capacity));
  }

  void norm(float* y, const float* x, const char* which, int l, std::size_t n) const {
    const std::string name(which);
    detail::layer_norm(y, static_cast<float*>(nullptr), static_cast<float*>(nullptr), x, w_.layer(name + ".weight", l),
                       w_.layer(name + ".bias", l), n, std::size_t(w_.config().dim), w_.config().norm_eps);
  }

  // y(n, m) = x W^T + b
  void linear(float* y, const float* x, std::size_t n, const packed_matrix& w, const char* bias, int l) const {
    const std::size_t m = w.rows();
    matmul(y, m, x, w.cols(), n, w);
    const float* b = w_.layer(bias, l);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < m; ++j) y[i * m + j] += b[j];
  }

  struct layer_kernels {
    packed_matrix qkv, proj, fc, fc_proj;
  };

  gpt2_weights w_;
  detail::attention_shape attention_;
  std::vector<layer_kernels> layers_;
  packed_matrix classifier_;
  kv_cache_type kv_type_ = kv_cache_type::f32;  // what new_state's caches store
};

}  // namespace ipa
