// SPDX-License-Identifier: MIT
// The GPT-2 architecture for training, the llm.c way: a full-sequence forward that keeps the
// activations, and a hand-written backward on Eigen. Attention is the Llama path's
// (model/attention.hpp) with kv_heads = heads.
//
// Shapes: B = sequences, T = positions per sequence (right-padded), N = B*T, d = dim,
// h = hidden_dim, V = vocab. Row-major; weights (out, in) as in gpt2_weights.
#pragma once
#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/model/attention.hpp"
#include "ipa/model/gpt2_weights.hpp"
#include "ipa/model/layers.hpp"
#include "ipa/model/trainable_parameters.hpp"

namespace ipa {

/// A GPT-2 model whose parameters (T = float to train, double to check gradients) take
/// gradients; the same interface as trainable_llama.
template <class T = float>
class trainable_gpt2 : public detail::trainable_parameters<T> {
  using base = detail::trainable_parameters<T>;
  using base::grad, base::layer, base::layer_grad, base::params_, base::tensor;

 public:
  using scalar = T;
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using map = Eigen::Map<matrix>;
  using const_map = Eigen::Map<const matrix>;
  using row = Eigen::Matrix<T, 1, Eigen::Dynamic>;
  using const_row = Eigen::Map<const row>;

  explicit trainable_gpt2(const gpt2_weights& w)
      : base("trainable_gpt2", w.slots(), w.data()),
        c_(w.config()),
        attention_{std::size_t(c_.n_heads), std::size_t(c_.n_heads), std::size_t(c_.head_size())} {}

  const gpt2_config& config() const noexcept { return c_; }

  gpt2_weights to_weights() const { return gpt2_weights(c_, std::vector<float>(params_.begin(), params_.end())); }

  /// Runs tokens (B x Tn, row-major) and keeps activations; logits() is then (B*Tn, V).
  void forward(std::span<const token_id> tokens, std::size_t batch, std::size_t steps) {
    const std::size_t B = batch, Tn = steps, N = B * Tn, d = c_.dim, hd = c_.hidden_dim, V = c_.vocab_size,
                      L = c_.n_layers, H = c_.n_heads;
    this->check_batch(tokens, B, Tn, c_.seq_len, c_.vocab_size);
    B_ = B;
    T_ = Tn;
    tokens_.assign(tokens.begin(), tokens.end());
    acts_.resize(L);
    for (auto& a : acts_) {
      for (auto* v : {&a.x, &a.xn1, &a.att, &a.x_mid, &a.xn2}) v->resize(N * d);
      for (auto* v : {&a.mean1, &a.rstd1, &a.mean2, &a.rstd2}) v->resize(N);
      a.qkv.resize(N * 3 * d);
      a.probs.resize(B * H * Tn * Tn);  // only the causal triangle is ever written or read
      a.h.resize(N * hd);
      a.g.resize(N * hd);
    }
    x_final_.resize(N * d);
    xn_final_.resize(N * d);
    mean_final_.resize(N);
    rstd_final_.resize(N);
    logits_.resize(N * V);

    std::vector<T>& x = x_;
    x.resize(N * d);
    const T *wte = tensor("wte"), *wpe = tensor("wpe");
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t j = 0; j < d; ++j) x[i * d + j] = wte[std::size_t(tokens[i]) * d + j] + wpe[(i % Tn) * d + j];
    const T eps = T(c_.norm_eps);
    for (std::size_t l = 0; l < L; ++l) {
      layer_acts& a = acts_[l];
      a.x = x;
      detail::layer_norm(a.xn1.data(), a.mean1.data(), a.rstd1.data(), x.data(), layer("ln_1.weight", l),
                         layer("ln_1.bias", l), N, d, eps);
      linear(a.qkv.data(), a.xn1.data(), N, "attn.c_attn", l, 3 * d, d);
      detail::causal_attention_forward(attention_, B_, T_, a.qkv.data(), a.probs.data(), a.att.data());
      linear(a.x_mid.data(), a.att.data(), N, "attn.c_proj", l, d, d);
      map(a.x_mid.data(), N, d) += const_map(x.data(), N, d);
      detail::layer_norm(a.xn2.data(), a.mean2.data(), a.rstd2.data(), a.x_mid.data(), layer("ln_2.weight", l),
                         layer("ln_2.bias", l), N, d, eps);
      linear(a.h.data(), a.xn2.data(), N, "mlp.c_fc", l, hd, d);
      for (std::size_t j = 0; j < N * hd; ++j) a.g[j] = detail::gelu(a.h[j], c_.gelu);
      linear(x.data(), a.g.data(), N, "mlp.c_proj", l, d, hd);
      map(x.data(), N, d) += const_map(a.x_mid.data(), N, d);
    }
    x_final_ = x;
    detail::layer_norm(xn_final_.data(), mean_final_.data(), rstd_final_.data(), x.data(), tensor("ln_f.weight"),
                       tensor("ln_f.bias"), N, d, eps);
    map(logits_.data(), N, V).noalias() = const_map(xn_final_.data(), N, d) * classifier().transpose();
  }

  std::size_t batch() const noexcept { return B_; }
  std::size_t steps() const noexcept { return T_; }
  std::span<const T> logits() const noexcept { return logits_; }
  /// (B*T, d) the normalised final hidden state (what the tied classifier reads).
  std::span<const T> final_hidden() const noexcept { return xn_final_; }

  /// Accumulates into gradients() the parameter gradient of a loss whose derivative with respect
  /// to logits() is `dlogits` (B*T, V), plus `dhidden` (B*T, d) with respect to final_hidden().
  void backward(std::span<const T> dlogits, std::span<const T> dhidden = {}) {
    const std::size_t N = B_ * T_, d = c_.dim, hd = c_.hidden_dim, V = c_.vocab_size;
    if (N == 0) throw shape_error("trainable_gpt2::backward: call forward() first");
    if (dlogits.size() != N * V)
      throw shape_error("trainable_gpt2::backward: dlogits holds " + std::to_string(dlogits.size()) +
                        " values, expected " + std::to_string(N * V));
    if (!dhidden.empty() && dhidden.size() != N * d)
      throw shape_error("trainable_gpt2::backward: dhidden holds " + std::to_string(dhidden.size()) +
                        " values, expected " + std::to_string(N * d));
    const const_map dlog(dlogits.data(), N, V);
    std::vector<T>&dxn = dxn_, &dx = dx_;
    dxn.resize(N * d);
    dx.assign(N * d, T(0));
    map(dxn.data(), N, d).noalias() = dlog * classifier();
    if (!dhidden.empty()) map(dxn.data(), N, d) += const_map(dhidden.data(), N, d);
    map(grad("wte"), V, d).noalias() += dlog.transpose() * const_map(xn_final_.data(), N, d);
    detail::layer_norm_backward(dx.data(), grad("ln_f.weight"), grad("ln_f.bias"), dxn.data(), x_final_.data(),
                                mean_final_.data(), rstd_final_.data(), tensor("ln_f.weight"), N, d);

    std::vector<T>&dg = dg_, &dqkv = dqkv_, &datt = datt_;
    dg.resize(N * hd);
    dqkv.resize(N * 3 * d);
    datt.resize(N * d);
    for (std::size_t l = c_.n_layers; l-- > 0;) {
      layer_acts& a = acts_[l];
      // feed-forward: x = x_mid + c_proj(gelu(c_fc(ln_2(x_mid))))
      linear_backward(dg.data(), dx.data(), a.g.data(), N, "mlp.c_proj", l, d, hd);
      for (std::size_t j = 0; j < N * hd; ++j) dg[j] *= detail::gelu_grad(a.h[j], c_.gelu);
      linear_backward(dxn.data(), dg.data(), a.xn2.data(), N, "mlp.c_fc", l, hd, d);
      detail::layer_norm_backward(dx.data(), layer_grad("ln_2.weight", l), layer_grad("ln_2.bias", l), dxn.data(),
                                  a.x_mid.data(), a.mean2.data(), a.rstd2.data(), layer("ln_2.weight", l), N, d);
      // attention: x_mid = x + c_proj(attention(c_attn(ln_1(x))))
      linear_backward(datt.data(), dx.data(), a.att.data(), N, "attn.c_proj", l, d, d);
      detail::causal_attention_backward(attention_, B_, T_, a.qkv.data(), a.probs.data(), datt.data(), dqkv.data());
      linear_backward(dxn.data(), dqkv.data(), a.xn1.data(), N, "attn.c_attn", l, 3 * d, d);
      detail::layer_norm_backward(dx.data(), layer_grad("ln_1.weight", l), layer_grad("ln_1.bias", l), dxn.data(),
                                  a.x.data(), a.mean1.data(), a.rstd1.data(), layer("ln_1.weight", l), N, d);
    }
    // embeddings: scatter-add (one thread: ids repeat)
    T *dwte = grad("wte"), *dwpe = grad("wpe");
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t j = 0; j < d; ++j) {
        dwte[std::size_t(tokens_[i]) * d + j] += dx[i * d + j];
        dwpe[(i % T_) * d + j] += dx[i * d + j];
      }
  }

 private:
  struct layer_acts {
    std::vector<T> x, xn1, mean1, rstd1, qkv, probs, att, x_mid, xn2, mean2, rstd2, h, g;
  };

  const_map classifier() const { return const_map(tensor("wte"), c_.vocab_size, c_.dim); }

  // y(n, out) = x(n, in) W^T + b for the projection `name` (name.weight, name.bias) of layer l
  void linear(T* y, const T* x, std::size_t n, const std::string& name, std::size_t l, std::size_t out,
              std::size_t in) const {
    map ym(y, n, out);
    ym.noalias() = const_map(x, n, in) * const_map(layer(name + ".weight", l), out, in).transpose();
    ym.rowwise() += const_row(layer(name + ".bias", l), out);
  }
  // dx(n, in) = dy W (overwritten); dW += dy^T x; db += column sums of dy
  void linear_backward(T* dx, const T* dy, const T* x, std::size_t n, const std::string& name, std::size_t l,
                       std::size_t out, std::size_t in) {
    const const_map dym(dy, n, out);
    map(dx, n, in).noalias() = dym * const_map(layer(name + ".weight", l), out, in);
    map(layer_grad(name + ".weight", l), out, in).noalias() += dym.transpose() * const_map(x, n, in);
    Eigen::Map<row>(layer_grad(name + ".bias", l), out) += dym.colwise().sum();
  }

  gpt2_config c_;
  detail::attention_shape attention_;
  std::size_t B_ = 0, T_ = 0;
  std::vector<token_id> tokens_;
  std::vector<layer_acts> acts_;
  std::vector<T> x_final_, xn_final_, mean_final_, rstd_final_, logits_;
  std::vector<T> x_, dxn_, dx_, dg_, dqkv_, datt_;  // scratch, reused across calls
};

}  // namespace ipa
