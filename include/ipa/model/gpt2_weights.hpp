// SPDX-License-Identifier: MIT
// GPT-2 architecture hyper-parameters and weights in one buffer. Projections are stored
// (out, in) like nn.Linear and llama2.c, so both architectures share the matmul kernels; the
// Hugging Face reader transposes GPT-2's Conv1D (in, out) tensors on the way in.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/model/flat_weights.hpp"

namespace ipa {

/// The feed-forward activation: GELU with tanh (Hugging Face `gelu_new`, GPT-2's own) or erf.
enum class gelu_kind { tanh, erf };

/// Hyper-parameters of a GPT-2-architecture transformer (LayerNorm, learned positions, GELU,
/// fused QKV with biases, tied output).
struct gpt2_config {
  int dim = 0;         ///< n_embd
  int hidden_dim = 0;  ///< n_inner (4 * dim by default)
  int n_layers = 0;
  int n_heads = 0;
  int vocab_size = 0;
  int seq_len = 0;  ///< n_positions: rows of the position embedding
  float norm_eps = 1e-5f;
  gelu_kind gelu = gelu_kind::tanh;

  int head_size() const noexcept { return dim / n_heads; }

  void validate(const std::string& where = "gpt2_config") const {
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
    check(vocab_size, "vocab_size");
    check(seq_len, "seq_len");
    if (dim % n_heads != 0)
      fail("dim (" + std::to_string(dim) + ") must be a multiple of n_heads (" + std::to_string(n_heads) + ")");
    if (!(norm_eps > 0.0f) || !std::isfinite(norm_eps)) fail("norm_eps must be positive and finite");
  }

  std::uint64_t parameter_count() const noexcept {
    const std::uint64_t d = dim, h = hidden_dim, L = n_layers, V = vocab_size, S = seq_len;
    return (V + S) * d + L * (2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + h * d + h + d * h + d) + 2 * d;
  }
};

/// Where each tensor of a GPT-2 model sits in one flat buffer. Names follow Hugging Face's
/// (without the `transformer.` prefix); stacked per-layer tensors drop the `h.N.` part.
inline std::vector<tensor_slot> gpt2_layout(const gpt2_config& config) {
  config.validate();
  const std::size_t d = config.dim, h = config.hidden_dim, L = config.n_layers;
  std::vector<tensor_slot> slots;
  std::size_t at = 0;
  auto add = [&](const char* name, std::size_t layers, std::size_t rows, std::size_t cols) {
    slots.push_back({name, at, rows, cols, layers});
    at += layers * rows * cols;
  };
  add("wte", 1, std::size_t(config.vocab_size), d);
  add("wpe", 1, std::size_t(config.seq_len), d);
  add("ln_1.weight", L, 1, d);
  add("ln_1.bias", L, 1, d);
  add("attn.c_attn.weight", L, 3 * d, d);  // Q | K | V rows
  add("attn.c_attn.bias", L, 1, 3 * d);
  add("attn.c_proj.weight", L, d, d);
  add("attn.c_proj.bias", L, 1, d);
  add("ln_2.weight", L, 1, d);
  add("ln_2.bias", L, 1, d);
  add("mlp.c_fc.weight", L, h, d);
  add("mlp.c_fc.bias", L, 1, h);
  add("mlp.c_proj.weight", L, d, h);
  add("mlp.c_proj.bias", L, 1, d);
  add("ln_f.weight", 1, 1, d);
  add("ln_f.bias", 1, 1, d);
  return slots;
}

/// All weights of a GPT-2 model in one contiguous buffer (gpt2_layout's order).
class gpt2_weights : public detail::flat_weights<gpt2_config> {
 public:
  gpt2_weights() = default;
  /// Zeros.
  explicit gpt2_weights(const gpt2_config& config) : flat_weights("gpt2_weights", config, gpt2_layout(config)) {}
  /// Takes `data` in gpt2_layout(config)'s order; throws shape_error when its size differs.
  gpt2_weights(const gpt2_config& config, std::vector<float> data)
      : flat_weights("gpt2_weights", config, gpt2_layout(config), std::move(data)) {}

  /// nanoGPT's initialisation: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 L)), biases
  /// 0, LayerNorm weights 1.
  static gpt2_weights random(const gpt2_config& config, std::uint64_t seed) {
    gpt2_weights w(config);
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    const float residual = 1.0f / std::sqrt(2.0f * float(config.n_layers));
    for (const tensor_slot& s : w.slots_) {
      auto t = w.tensor(s.name);
      const bool bias = s.name.ends_with(".bias"), norm = s.name.starts_with("ln_");
      const bool proj = s.name.ends_with("c_proj.weight");
      for (float& v : t) v = norm && !bias ? 1.0f : bias ? 0.0f : normal(gen) * (proj ? residual : 1.0f);
    }
    return w;
  }
};

}  // namespace ipa
