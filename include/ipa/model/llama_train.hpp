// SPDX-License-Identifier: MIT
// The Llama architecture for training, the llm.c way: a full-sequence forward that keeps the
// activations backward needs, and a hand-written backward in plain math on Eigen.
//
// Shapes: B = sequences, T = positions per sequence (right-padded; causal attention means
// padding never reaches a real position), N = B*T, d = dim, kv = kv_dim, h = hidden_dim,
// H = heads, V = vocab. Row-major throughout; weights are (out, in) like llama2.c.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "ipa/core/error.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/types.hpp"
#include "ipa/model/attention.hpp"
#include "ipa/model/llama_weights.hpp"
#include "ipa/model/trainable_parameters.hpp"

namespace ipa {

/// A Llama model whose parameters (scalar T: float to train, double to check gradients) take
/// gradients. forward() over a (B, T) token batch keeps activations; backward() accumulates
/// d loss / d parameters from d loss / d logits (and optionally d loss / d final hidden state,
/// for value heads).
template <class T = float>
class trainable_llama : public detail::trainable_parameters<T> {
  using base = detail::trainable_parameters<T>;
  using base::grad, base::grads_, base::layer, base::layer_grad, base::params_, base::tensor;

 public:
  using scalar = T;
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using map = Eigen::Map<matrix>;
  using const_map = Eigen::Map<const matrix>;

  explicit trainable_llama(const llama_weights& w)
      : base("trainable_llama", w.slots(), w.data()),
        c_(w.config()),
        attention_{std::size_t(c_.n_heads), std::size_t(c_.n_kv_heads), std::size_t(c_.head_size())} {
    c_.rope_table(rope_cos_, rope_sin_);
  }

  const llama_config& config() const noexcept { return c_; }

  /// The current parameters as float weights (for decoding with llama_model, or saving).
  llama_weights to_weights() const { return llama_weights(c_, std::vector<float>(params_.begin(), params_.end())); }

  /// Runs tokens (B x Tn, row-major) and keeps activations; logits() is then (B*Tn, V).
  void forward(std::span<const token_id> tokens, std::size_t batch, std::size_t steps) {
    const std::size_t B = batch, Tn = steps, N = B * Tn, d = c_.dim, kv = c_.kv_dim(), hd = c_.hidden_dim,
                      V = c_.vocab_size, L = c_.n_layers, H = c_.n_heads;
    this->check_batch(tokens, B, Tn, c_.seq_len, c_.input_vocab());
    B_ = B;
    T_ = Tn;
    tokens_.assign(tokens.begin(), tokens.end());
    acts_.resize(L);
    for (auto& a : acts_) {
      a.x.resize(N * d);
      a.xn1.resize(N * d);
      a.rstd1.resize(N);
      a.qkv.resize(N * (d + 2 * kv));
      a.probs.resize(B * H * Tn * Tn);  // only the causal triangle is ever written or read
      a.att.resize(N * d);
      a.x_mid.resize(N * d);
      a.xn2.resize(N * d);
      a.rstd2.resize(N);
      a.h13.resize(N * 2 * hd);
      a.hb.resize(N * hd);
    }
    x_final_.resize(N * d);
    xn_final_.resize(N * d);
    rstd_final_.resize(N);
    logits_.resize(N * V);

    std::vector<T>& x = x_;
    x.resize(N * d);
    const T* emb = tensor("tok_embeddings");
    for (std::size_t i = 0; i < N; ++i) std::copy_n(emb + std::size_t(tokens[i]) * d, d, x.data() + i * d);
    for (std::size_t l = 0; l < L; ++l) {
      layer_acts& a = acts_[l];
      a.x = x;
      rmsnorm(a.xn1.data(), a.rstd1.data(), x.data(), layer("attention_norm", l), N);
      // Q|K|V side by side in one (N, d + 2kv) buffer
      map qkv(a.qkv.data(), N, d + 2 * kv);
      const_map xn1(a.xn1.data(), N, d);
      qkv.leftCols(d).noalias() = xn1 * weight("wq", l, d, d).transpose();
      qkv.middleCols(d, kv).noalias() = xn1 * weight("wk", l, kv, d).transpose();
      qkv.rightCols(kv).noalias() = xn1 * weight("wv", l, kv, d).transpose();
      for (std::size_t i = 0; i < N; ++i) {
        T* q = a.qkv.data() + i * (d + 2 * kv);
        rope(q, d, i % Tn, +1);
        rope(q + d, kv, i % Tn, +1);
      }
      detail::causal_attention_forward(attention_, B_, T_, a.qkv.data(), a.probs.data(), a.att.data());
      map(a.x_mid.data(), N, d).noalias() =
          const_map(x.data(), N, d) + const_map(a.att.data(), N, d) * weight("wo", l, d, d).transpose();
      rmsnorm(a.xn2.data(), a.rstd2.data(), a.x_mid.data(), layer("ffn_norm", l), N);
      map h13(a.h13.data(), N, 2 * hd);
      const_map xn2(a.xn2.data(), N, d);
      h13.leftCols(hd).noalias() = xn2 * weight("w1", l, hd, d).transpose();
      h13.rightCols(hd).noalias() = xn2 * weight("w3", l, hd, d).transpose();
      for (std::size_t i = 0; i < N; ++i)
        for (std::size_t j = 0; j < hd; ++j) {
          const T g = a.h13[i * 2 * hd + j], up = a.h13[i * 2 * hd + hd + j];
          a.hb[i * hd + j] = g / (T(1) + std::exp(-g)) * up;
        }
      map(x.data(), N, d).noalias() =
          const_map(a.x_mid.data(), N, d) + const_map(a.hb.data(), N, hd) * weight("w2", l, d, hd).transpose();
    }
    x_final_ = x;
    rmsnorm(xn_final_.data(), rstd_final_.data(), x.data(), tensor("norm"), N);
    map(logits_.data(), N, V).noalias() = const_map(xn_final_.data(), N, d) * classifier().transpose();
  }

  std::size_t batch() const noexcept { return B_; }
  std::size_t steps() const noexcept { return T_; }
  /// (B*T, V) next-token logits of the last forward().
  std::span<const T> logits() const noexcept { return logits_; }
  /// (B*T, d) the normalised final hidden state (what the classifier reads).
  std::span<const T> final_hidden() const noexcept { return xn_final_; }

  /// Accumulates into gradients() the parameter gradient of a loss whose derivative with respect
  /// to logits() is `dlogits` (B*T, V), plus `dhidden` (B*T, d) with respect to final_hidden().
  void backward(std::span<const T> dlogits, std::span<const T> dhidden = {}) {
    const std::size_t N = B_ * T_, d = c_.dim, kv = c_.kv_dim(), hd = c_.hidden_dim, V = c_.vocab_size;
    if (N == 0) throw shape_error("trainable_llama::backward: call forward() first");
    if (dlogits.size() != N * V)
      throw shape_error("trainable_llama::backward: dlogits holds " + std::to_string(dlogits.size()) +
                        " values, expected " + std::to_string(N * V));
    if (!dhidden.empty() && dhidden.size() != N * d)
      throw shape_error("trainable_llama::backward: dhidden holds " + std::to_string(dhidden.size()) +
                        " values, expected " + std::to_string(N * d));
    const const_map dlog(dlogits.data(), N, V);
    // classifier: logits = xn_final * W^T
    std::vector<T>&dxn = dxn_, &dx = dx_;
    dxn.resize(N * d);
    dx.resize(N * d);
    map(dxn.data(), N, d).noalias() = dlog * classifier();
    if (!dhidden.empty()) map(dxn.data(), N, d) += const_map(dhidden.data(), N, d);
    classifier_grad().noalias() += dlog.transpose() * const_map(xn_final_.data(), N, d);
    rmsnorm_backward(dx.data(), grad("norm"), dxn.data(), x_final_.data(), rstd_final_.data(), tensor("norm"), N,
                     false);

    std::vector<T>&dhb = dhb_, &dh13 = dh13_, &dqkv = dqkv_, &datt = datt_;
    dhb.resize(N * hd);
    dh13.resize(N * 2 * hd);
    dqkv.resize(N * (d + 2 * kv));
    datt.resize(N * d);
    for (std::size_t l = c_.n_layers; l-- > 0;) {
      layer_acts& a = acts_[l];
      // feed-forward: x = x_mid + w2(silu(h1) * h3)
      const_map dxm(dx.data(), N, d);
      map(dhb.data(), N, hd).noalias() = dxm * weight("w2", l, d, hd);
      weight_grad("w2", l, d, hd).noalias() += dxm.transpose() * const_map(a.hb.data(), N, hd);
      for (std::size_t i = 0; i < N; ++i)
        for (std::size_t j = 0; j < hd; ++j) {
          const T g = a.h13[i * 2 * hd + j], up = a.h13[i * 2 * hd + hd + j];
          const T sig = T(1) / (T(1) + std::exp(-g)), silu = g * sig, dh = dhb[i * hd + j];
          dh13[i * 2 * hd + j] = dh * up * sig * (T(1) + g * (T(1) - sig));
          dh13[i * 2 * hd + hd + j] = dh * silu;
        }
      const_map dh13m(dh13.data(), N, 2 * hd);
      const_map xn2(a.xn2.data(), N, d);
      map(dxn.data(), N, d).noalias() = dh13m.leftCols(hd) * weight("w1", l, hd, d);
      map(dxn.data(), N, d).noalias() += dh13m.rightCols(hd) * weight("w3", l, hd, d);
      weight_grad("w1", l, hd, d).noalias() += dh13m.leftCols(hd).transpose() * xn2;
      weight_grad("w3", l, hd, d).noalias() += dh13m.rightCols(hd).transpose() * xn2;
      rmsnorm_backward(dx.data(), layer_grad("ffn_norm", l), dxn.data(), a.x_mid.data(), a.rstd2.data(),
                       layer("ffn_norm", l), N, true);
      // attention: x_mid = x + wo(att)
      map(datt.data(), N, d).noalias() = const_map(dx.data(), N, d) * weight("wo", l, d, d);
      weight_grad("wo", l, d, d).noalias() += const_map(dx.data(), N, d).transpose() * const_map(a.att.data(), N, d);
      detail::causal_attention_backward(attention_, B_, T_, a.qkv.data(), a.probs.data(), datt.data(), dqkv.data());
      for (std::size_t i = 0; i < N; ++i) {
        T* dq = dqkv.data() + i * (d + 2 * kv);
        rope(dq, d, i % T_, -1);  // a rotation's transpose is the rotation back
        rope(dq + d, kv, i % T_, -1);
      }
      const_map dq(dqkv.data(), N, d + 2 * kv);
      const_map xn1(a.xn1.data(), N, d);
      map(dxn.data(), N, d).noalias() = dq.leftCols(d) * weight("wq", l, d, d);
      map(dxn.data(), N, d).noalias() += dq.middleCols(d, kv) * weight("wk", l, kv, d);
      map(dxn.data(), N, d).noalias() += dq.rightCols(kv) * weight("wv", l, kv, d);
      weight_grad("wq", l, d, d).noalias() += dq.leftCols(d).transpose() * xn1;
      weight_grad("wk", l, kv, d).noalias() += dq.middleCols(d, kv).transpose() * xn1;
      weight_grad("wv", l, kv, d).noalias() += dq.rightCols(kv).transpose() * xn1;
      rmsnorm_backward(dx.data(), layer_grad("attention_norm", l), dxn.data(), a.x.data(), a.rstd1.data(),
                       layer("attention_norm", l), N, true);
    }
    // embedding lookup: scatter-add (one thread: ids repeat)
    T* demb = grad("tok_embeddings");
    for (std::size_t i = 0; i < N; ++i) {
      T* row = demb + std::size_t(tokens_[i]) * d;
      for (std::size_t j = 0; j < d; ++j) row[j] += dx[i * d + j];
    }
  }

 private:
  struct layer_acts {
    std::vector<T> x, xn1, rstd1, qkv, probs, att, x_mid, xn2, rstd2, h13, hb;
  };

  const_map weight(const char* name, std::size_t l, std::size_t rows, std::size_t cols) const {
    return const_map(layer(name, l), rows, cols);
  }
  map weight_grad(const char* name, std::size_t l, std::size_t rows, std::size_t cols) {
    return map(layer_grad(name, l), rows, cols);
  }
  const_map classifier() const {
    return const_map(tensor(c_.shared_classifier ? "tok_embeddings" : "output"), c_.vocab_size, c_.dim);
  }
  map classifier_grad() { return map(grad(c_.shared_classifier ? "tok_embeddings" : "output"), c_.vocab_size, c_.dim); }

  // y = w * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), per row
  void rmsnorm(T* y, T* rstd, const T* x, const T* w, std::size_t n) const noexcept {
    const std::size_t d = c_.dim;
    for (std::size_t i = 0; i < n; ++i) {
      const T* xi = x + i * d;
      T ss = 0;
      for (std::size_t j = 0; j < d; ++j) ss += xi[j] * xi[j];
      rstd[i] = T(1) / std::sqrt(ss / T(d) + T(c_.norm_eps));
      for (std::size_t j = 0; j < d; ++j) y[i * d + j] = w[j] * (rstd[i] * xi[j]);
    }
  }
  // dx (+)= rstd * (w*dy) - x * rstd^3 / d * sum(w*dy*x);  dw += sum over rows of dy * x * rstd
  void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* rstd, const T* w, std::size_t n,
                        bool accumulate) const noexcept {
    const std::size_t d = c_.dim;
    for (std::size_t i = 0; i < n; ++i) {
      const T *xi = x + i * d, *dyi = dy + i * d;
      const T r = rstd[i];
      T dot = 0;
      for (std::size_t j = 0; j < d; ++j) dot += w[j] * dyi[j] * xi[j];
      const T k = r * r * r / T(d) * dot;
      for (std::size_t j = 0; j < d; ++j) {
        const T g = r * w[j] * dyi[j] - xi[j] * k;
        dx[i * d + j] = accumulate ? dx[i * d + j] + g : g;
        dw[j] += dyi[j] * xi[j] * r;
      }
    }
  }

  // Rotates interleaved pairs of every head at position p; sign -1 rotates back (the transpose).
  void rope(T* v, std::size_t width, std::size_t p, int sign) const noexcept {
    const std::size_t hs = c_.head_size(), half = hs / 2;
    const T* cs = rope_cos_.data() + p * half;
    const T* sn = rope_sin_.data() + p * half;
    for (std::size_t h0 = 0; h0 < width; h0 += hs)
      for (std::size_t i = 0; i < half; ++i) {
        const T a = v[h0 + 2 * i], b = v[h0 + 2 * i + 1], s = T(sign) * sn[i];
        v[h0 + 2 * i] = a * cs[i] - b * s;
        v[h0 + 2 * i + 1] = a * s + b * cs[i];
      }
  }

  llama_config c_;
  detail::attention_shape attention_;
  std::vector<T> rope_cos_, rope_sin_;
  std::size_t B_ = 0, T_ = 0;
  std::vector<token_id> tokens_;
  std::vector<layer_acts> acts_;
  std::vector<T> x_final_, xn_final_, rstd_final_, logits_;
  std::vector<T> x_, dxn_, dx_, dhb_, dh13_, dqkv_, datt_;  // scratch, reused across calls
};

}  // namespace ipa
