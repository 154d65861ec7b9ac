// SPDX-License-Identifier: MIT
// The Llama architecture (RMSNorm, RoPE on interleaved pairs, grouped-query attention, SwiGLU)
// as a batched, incremental next-token policy with a preallocated KV cache.
//
// Shapes: B = batch rows, n = tokens fed in one call (any mix of rows), d = dim,
// kv = kv_dim, h = hidden_dim, V = vocab, S = positions the cache holds. Row-major throughout.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/huge_pages.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/types.hpp"
#include "ipa/io/mapped_file.hpp"
#include "ipa/model/attention.hpp"
#include "ipa/model/kv_cache.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

/// Decoding state of a batch: the KV caches and scratch space that is grown once and then
/// reused (no allocation per token).
struct llama_state : kv_cache_state {
  std::vector<float> x, xb, qkv, att, proj, h13, hb, logits_x, packed_rows;
};

/// A Llama-architecture transformer over llama_weights.
class llama_model {
 public:
  using state_type = llama_state;

  /// A model held in f32, its matrices repacked for the kernels (packed_matrix).
  explicit llama_model(llama_weights weights) : config_(weights.config()), w_(std::move(weights)) {
    config_.validate();
    pack();
    init();
  }
  /// A model read where its file stores it (compact matrices, see compact_matrix.hpp): no f32
  /// copy of the weights. (AVX-512 VNNI builds keep Q8_0 and Q4_0 matrices interleaved instead,
  /// in the same bytes, and hand the file's pages of them back: interleave_matrices.)
  explicit llama_model(llama_compact_weights weights) : config_(weights.config), compact_(std::move(weights)) {
    config_.validate();
    use_compact();
    init();
  }

  const llama_config& config() const noexcept { return config_; }
  /// The f32 weights (empty for a model built from llama_compact_weights).
  const llama_weights& weights() const noexcept { return w_; }
  /// True when the weights are read in place (llama_compact_weights).
  bool is_compact() const noexcept { return !compact_.layers.empty(); }
  /// Bytes of weights read per decoded token (every matrix once).
  std::size_t weight_bytes() const noexcept { return weight_bytes_; }
  std::size_t vocab_size() const noexcept { return std::size_t(config_.vocab_size); }
  std::size_t context_length() const noexcept { return std::size_t(config_.seq_len); }

  /// What the KV caches of states made from now on store (default f32; f16 is llama.cpp's
  /// default: half the cache's memory, and its arithmetic, see attend_heads).
  void set_kv_cache_type(kv_cache_type type) noexcept { kv_type_ = type; }

  /// A state for `batch` rows holding up to `capacity` positions each (default: the context).
  llama_state new_state(int batch, int capacity = 0) const {
    const llama_config& c = config_;
    llama_state s;
    detail::init_kv_cache(s, batch, capacity, c.seq_len, c.n_layers, std::size_t(c.n_kv_heads),
                          std::size_t(c.head_size()), kv_type_, "llama_model");
    return s;
  }

  /// Feeds n tokens: token i goes to row rows[i] at that row's next position (tokens of one row
  /// in order). Writes next-token logits for the items listed in `logit_items` into `logits`
  /// (logit_items.size() x V). Throws shape_error when a row would outgrow its cache.
  void forward(llama_state& s, std::span<const int> rows, std::span<const token_id> tokens,
               std::span<const std::size_t> logit_items, std::span<float> logits) const {
    const llama_config& c = config_;
    const std::size_t n = tokens.size(), d = c.dim;
    detail::place_tokens(s, rows, tokens, c.input_vocab(), logit_items, logits.size(), c.vocab_size, "llama_model");
    const int threads = team_size(n);
    grow(s, n, logit_items.size(), std::size_t(threads));
    for (std::size_t i = 0; i < n; ++i) embed(tokens[i], s.x.data() + i * d);
    // One team for the whole pass: a barrier between stages costs less than a fork, and a small
    // model's threads compute the same panels of every product each step, so its weights stay
    // split over the cores' caches (stories260K's 1 MB does not fit one core's L2).
    run_team(threads, [&](const team& t) noexcept { layers(t, s, rows, n, logit_items, logits); });
    for (std::size_t i = 0; i < n; ++i) s.length[rows[i]] = s.pos[i] + 1;
    require_finite_logits(logits.first(logit_items.size() * std::size_t(c.vocab_size)));
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
  // A product's weights as the kernels read them: f32 repacked into panels (packed_matrix), or
  // compact rows read where the file holds them or interleaved (compact_stack).
  struct projection {
    packed_matrix packed;
    compact_stack compact;
    bool is_compact() const noexcept { return compact.rows() > 0; }
    std::size_t rows() const noexcept { return is_compact() ? compact.rows() : packed.rows(); }
  };
  // The projections that read the same input are fused: Q|K|V and W1|W3.
  struct layer_kernels {
    projection qkv, wo, w13, w2;
  };

  int team_size(std::size_t n) const noexcept { return team_threads(n * weight_bytes_); }

  // One thread's rows packed for a product: n tokens or m logit rows, of d or hd. pack_rows
  // takes 4 bytes an input; prepare_input for compact weights no more (compact_prepared_bytes,
  // with the groups of 16 rows of AVX-512 builds: Q8_0 1.3, Q8_K 3.2; F16/BF16 4).
  std::size_t packed_rows_floats(std::size_t n, std::size_t m) const noexcept {
    return std::max(n, m) * std::max(std::size_t(config_.dim), std::size_t(config_.hidden_dim));
  }

  // Scratch for n tokens, m of them with logits, on `threads` threads (each has its own normalised
  // input and rows packed for the products; the SwiGLU activations are shared).
  void grow(llama_state& s, std::size_t n, std::size_t m, std::size_t threads) const {
    const llama_config& c = config_;
    const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim;
    auto at_least = [](std::vector<float>& v, std::size_t size) {
      if (v.size() < size) v.resize(size);
    };
    at_least(s.x, n * d);
    at_least(s.xb, threads * n * d);
    at_least(s.qkv, n * (d + 2 * kv));
    at_least(s.att, n * d);
    at_least(s.proj, n * d);
    at_least(s.h13, n * 2 * hd);
    at_least(s.hb, n * hd);
    at_least(s.logits_x, threads * m * d);
    at_least(s.packed_rows, threads * packed_rows_floats(n, m));
    at_least(s.scores, n * c.n_heads * std::size_t(s.capacity));
  }

  // The transformer layers and the classifier, run by every thread of team t; stages that read
  // what other threads wrote are separated by t.sync().
  void layers(const team& t, llama_state& s, std::span<const int> rows, std::size_t n,
              std::span<const std::size_t> logit_items, std::span<float> logits) const noexcept {
    const llama_config& c = config_;
    const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim, qkv_w = d + 2 * kv;
    float* x = s.x.data();
    float* xb = s.xb.data() + t.rank() * n * d;  // this thread's
    float* hb = s.hb.data();                     // shared
    float* xp = s.packed_rows.data() + t.rank() * packed_rows_floats(n, logit_items.size());
    for (int l = 0; l < c.n_layers; ++l) {
      const layer_kernels& lk = layers_[l];
      // attention block: Q|K|V in one product; then per (token, kv head): RoPE, append K/V to
      // the cache, attend with the kv head's query heads
      rmsnorm(xb, x, attention_norm(l), n, d);
      team_matmul(t, s.qkv.data(), qkv_w, xb, d, n, lk.qkv, xp);
      t.sync();
      attention_stage(t, s, l, rows, n);
      t.sync();
      add_product(t, x, s.att.data(), d, n, lk.wo, xp, s.proj.data());
      t.sync();
      // SwiGLU feed-forward block: w2(silu(w1 x) * w3 x), with W1|W3 as one product
      rmsnorm(xb, x, ffn_norm(l), n, d);
      team_matmul(t, s.h13.data(), 2 * hd, xb, d, n, lk.w13, xp);
      t.sync();
      {  // each thread gates its share of the rows; every thread needs all of them for its w2 panels
        const auto [first, last] = t.share(n);
        for (std::size_t i = first; i < last; ++i) {
          const float* h = s.h13.data() + i * 2 * hd;
          silu_mul({h, hd}, {h + hd, hd}, {hb + i * hd, hd});
        }
      }
      t.sync();
      add_product(t, x, hb, hd, n, lk.w2, xp, s.proj.data());
      t.sync();
    }
    const std::size_t m = logit_items.size();
    float* lx = s.logits_x.data() + t.rank() * m * d;
    rmsnorm_rows(
        lx, [&](std::size_t j) { return x + logit_items[j] * d; }, final_norm(), m, d);
    team_matmul(t, logits.data(), c.vocab_size, lx, d, m, classifier_, xp);
  }

  // out(n, m) = in * w^T by team t, then done(c0, c1) on the columns [c0, c1) each piece wrote,
  // on the thread that wrote them. Each thread first packs all n input rows into its own xp
  // (pack_rows: once per product, not once per tile). A model that fits the cores' caches
  // splits every product the same way each pass (pairs of panels, for the two-panel tiles), so
  // each core keeps its share of the weights; a larger one streams them from memory anyway, and
  // hands out chunks of four panels to whichever thread is free (the host runs the two vCPUs at
  // different speeds from moment to moment: with even shares one waited at each barrier).
  // Compact weights go the same way in chunks of 16 rows (a panel's worth).
  template <class Done>
  void team_matmul(const team& t, float* out, std::size_t ldo, const float* in, std::size_t ldi, std::size_t n,
                   const projection& p, float* xp, Done&& done) const noexcept {
    if (p.is_compact()) {  // each thread prepares the inputs (compact_matrix.hpp) into its own xp
      auto* prepared = reinterpret_cast<unsigned char*>(xp);
      prepare_input(p.compact.input_type(), in, ldi, n, p.compact.cols(), prepared);
      const std::size_t rows = p.compact.rows(), chunks = (rows + 15) / 16;
      auto product = [&](std::size_t q0, std::size_t q1) {
        const std::size_t c0 = 16 * q0, c1 = std::min(rows, 16 * q1);
        p.compact.matmul_prepared(out, ldo, prepared, n, c0, c1);
        done(c0, c1);
      };
      if (!streamed()) {
        const auto [first, last] = t.share(chunks);
        product(first, last);
      } else {
        t.for_each_chunk(chunks, 4, product);
      }
      return;
    }
    const packed_matrix& w = p.packed;
    pack_rows(in, ldi, n, w.cols(), xp);
    const std::size_t panels = w.panels();
    if (!streamed()) {
      const auto [first, last] = t.share((panels + 1) / 2);
      const auto [c0, c1] =
          matmul_packed_panels(out, ldo, xp, n, w, std::min(panels, 2 * first), std::min(panels, 2 * last));
      done(c0, c1);
      return;
    }
    t.for_each_chunk(panels, 4, [&](std::size_t p0, std::size_t p1) {
      const auto [c0, c1] = matmul_packed_panels(out, ldo, xp, n, w, p0, p1);
      done(c0, c1);
    });
  }
  void team_matmul(const team& t, float* out, std::size_t ldo, const float* in, std::size_t ldi, std::size_t n,
                   const projection& w, float* xp) const noexcept {
    team_matmul(t, out, ldo, in, ldi, n, w, xp, [](std::size_t, std::size_t) {});
  }

  // x += in * w^T (x is n x d): each thread adds the columns it computed.
  void add_product(const team& t, float* x, const float* in, std::size_t ldi, std::size_t n, const projection& w,
                   float* xp, float* scratch) const noexcept {
    const std::size_t d = w.rows();
    team_matmul(t, scratch, d, in, ldi, n, w, xp, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = c0; j < c1; ++j) x[i * d + j] += scratch[i * d + j];
    });
  }

  // Each thread takes a share of the kv heads for every token: it appends its heads' keys and
  // values and attends in token order, so a prompt's later tokens see its earlier ones (and its
  // slice of the cache stays in its core's cache). With fewer kv heads than threads, tokens are
  // dealt out instead, and every key and value is appended before anyone attends.
  void attention_stage(const team& t, llama_state& s, int l, std::span<const int> rows, std::size_t n) const noexcept {
    const std::size_t kvh_count = attention_.kv_heads;
    if (kvh_count >= t.size()) {
      const auto [first, last] = t.share(kvh_count);
      for (std::size_t i = 0; i < n; ++i)  // every position this stage writes, asked for at once
        for (std::size_t kvh = first; kvh < last; ++kvh) s.fetch_for_append(std::size_t(l), rows[i], kvh, s.pos[i]);
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t kvh = first; kvh < last; ++kvh) {
          append_kv(s, l, rows, i, kvh);
          attend(s, l, rows, i, kvh);
        }
      return;
    }
    for (std::size_t i = t.rank(); i < n; i += t.size())
      for (std::size_t kvh = 0; kvh < kvh_count; ++kvh) append_kv(s, l, rows, i, kvh);
    t.sync();
    for (std::size_t i = t.rank(); i < n; i += t.size())
      for (std::size_t kvh = 0; kvh < kvh_count; ++kvh) attend(s, l, rows, i, kvh);
  }

  // Token i's kv head kvh in layer l: RoPE on its key, then the key and value into the row's cache.
  void append_kv(llama_state& s, int l, std::span<const int> rows, std::size_t i, std::size_t kvh) const noexcept {
    const std::size_t hs = attention_.head_size, d = attention_.q_width(), kv = attention_.kv_width();
    float* key = s.qkv.data() + i * attention_.row_width() + d + kvh * hs;
    const int p = s.pos[i];
    rope(key, hs, p);
    s.append_head(std::size_t(l), rows[i], kvh, p, key, key + kv);
  }

  // Token i's query heads that share kv head kvh: RoPE, then attention over the row's positions
  // 0..pos (all in the cache already).
  void attend(llama_state& s, int l, std::span<const int> rows, std::size_t i, std::size_t kvh) const noexcept {
    const std::size_t hs = attention_.head_size, d = attention_.q_width(), h0 = kvh * attention_.group(),
                      capacity = std::size_t(s.capacity);
    float* q = s.qkv.data() + i * attention_.row_width() + h0 * hs;
    const int p = s.pos[i];
    for (std::size_t g = 0; g < attention_.group(); ++g) rope(q + g * hs, hs, p);
    detail::attend_cached(q, attention_.group(), s, std::size_t(l), rows[i], kvh, std::size_t(p) + 1,
                          s.scores.data() + (i * attention_.heads + h0) * capacity, capacity,
                          s.att.data() + i * d + h0 * hs);
  }

  // out = x * w / sqrt(mean(x^2) + eps), row by row, as ggml_rms_norm computes it (the squares
  // rounded to float and summed in double, the mean rounded to float), so that the quantized
  // products that follow get llama.cpp's inputs to the bit (see attention.hpp). Rows go four at
  // a time: ggml's sum is one chain of dependent double adds, and four rows' chains side by side
  // take the time of one (a batch of 16 spent 3% of its step waiting on them one after another).
  // Row i is at row(i).
  template <class Row>
  void rmsnorm_rows(float* out, Row&& row, const float* weight, std::size_t n, std::size_t d) const noexcept {
    constexpr std::size_t R = 4;
    for (std::size_t i0 = 0; i0 < n; i0 += R) {
      const float* xs[R];
      double ss[R] = {};
      for (std::size_t k = 0; k < R; ++k) xs[k] = row(std::min(i0 + k, n - 1));  // (past n: the last again)
      for (std::size_t j = 0; j < d; ++j)
        for (std::size_t k = 0; k < R; ++k) {
          const float square = xs[k][j] * xs[k][j];
          ss[k] += double(square);
        }
      for (std::size_t k = 0; k < R && i0 + k < n; ++k) {
        const float scale = 1.0f / std::sqrt(float(ss[k] / double(d)) + config_.norm_eps);
        float* o = out + (i0 + k) * d;
        for (std::size_t j = 0; j < d; ++j) o[j] = weight[j] * (scale * xs[k][j]);
      }
    }
  }
  void rmsnorm(float* out, const float* x, const float* weight, std::size_t n, std::size_t d) const noexcept {
    rmsnorm_rows(
        out, [&](std::size_t i) { return x + i * d; }, weight, n, d);
  }

  // Rotates pair i of every head by pos * theta^(-2i/head_size): (v[2i], v[2i+1]), or
  // (v[i], v[i + half]) for weights stored for rotate_half (rope_pairs::halves).
  void rope(float* v, std::size_t width, int p) const noexcept {
    const std::size_t hs = config_.head_size(), half = hs / 2;
    const bool halves = compact_.rope == rope_pairs::halves;
    const std::size_t stride = halves ? 1 : 2, partner = halves ? half : 1;
    const float* cs = rope_cos_.data() + std::size_t(p) * half;
    const float* sn = rope_sin_.data() + std::size_t(p) * half;
    for (std::size_t h0 = 0; h0 < width; h0 += hs) {
      std::size_t i = 0;
#if defined(__FMA__)
      // eight pairs at a time, each rotated by the same operations as below (pairs side by side
      // taken apart into a and b, and put back)
      for (; i + 8 <= half; i += 8) {
        using detail::v8f;
        float* x = v + h0 + stride * i;
        const v8f c = detail::load8(cs + i), s = detail::load8(sn + i);
        v8f a = detail::load8(x), b;
        if (halves) {
          b = detail::load8(x + half);
        } else {
          const v8f hi = detail::load8(x + 8);
          b = __builtin_shufflevector(a, hi, 1, 3, 5, 7, 9, 11, 13, 15);
          a = __builtin_shufflevector(a, hi, 0, 2, 4, 6, 8, 10, 12, 14);
        }
        const v8f ra = detail::fma8(a, c, -(b * s)), rb = detail::fma8(a, s, b * c);
        if (halves) {
          std::memcpy(x, &ra, sizeof ra);
          std::memcpy(x + half, &rb, sizeof rb);
        } else {
          const v8f out_lo = __builtin_shufflevector(ra, rb, 0, 8, 1, 9, 2, 10, 3, 11),
                    out_hi = __builtin_shufflevector(ra, rb, 4, 12, 5, 13, 6, 14, 7, 15);
          std::memcpy(x, &out_lo, sizeof out_lo);
          std::memcpy(x + 8, &out_hi, sizeof out_hi);
        }
      }
#endif
      for (; i < half; ++i) {
        float* x = v + h0 + stride * i;
        const float a = x[0], b = x[partner];
        // the multiply-adds ggml's rope compiles to (GCC, FMA): the second product rounded first
        x[0] = std::fma(a, cs[i], -(b * sn[i]));
        x[partner] = std::fma(a, sn[i], b * cs[i]);
      }
    }
  }

  void pack() {
    const llama_config& c = config_;
    const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim;
    layers_.assign(std::size_t(c.n_layers), {});
    for (int l = 0; l < c.n_layers; ++l) {
      layer_kernels& k = layers_[std::size_t(l)];
      k.qkv.packed = packed_matrix({{w_.wq(l), d, d}, {w_.wk(l), d, kv}, {w_.wv(l), d, kv}}, d);
      k.wo.packed = packed_matrix(w_.wo(l), d, d, d);
      k.w13.packed = packed_matrix({{w_.w1(l), d, hd}, {w_.w3(l), d, hd}}, d);
      k.w2.packed = packed_matrix(w_.w2(l), hd, d, hd);
    }
    classifier_.packed = packed_matrix(w_.classifier(), d, std::size_t(c.vocab_size), d);
    weight_bytes_ = classifier_.packed.rows() * d * sizeof(float);
    for (const layer_kernels& k : layers_)
      for (const projection* m : {&k.qkv, &k.wo, &k.w13, &k.w2})
        weight_bytes_ += m->packed.rows() * m->packed.cols() * sizeof(float);
  }
  void use_compact() {
    const llama_config& c = config_;
    const llama_compact_weights& w = compact_;
    const std::size_t d = c.dim, L = c.n_layers, V = c.vocab_size;
    auto expect = [&](const compact_matrix& m, std::size_t rows, std::size_t cols, const std::string& what) {
      if (m.rows != rows || m.cols != cols || m.data == nullptr)
        throw shape_error("llama_model: " + what + " is " + std::to_string(m.rows) + " x " + std::to_string(m.cols) +
                          ", expected " + std::to_string(rows) + " x " + std::to_string(cols));
    };
    if (w.layers.size() != L || w.attention_norm.size() != L * d || w.ffn_norm.size() != L * d || w.norm.size() != d)
      throw shape_error("llama_model: compact weights hold " + std::to_string(w.layers.size()) + " layers and " +
                        std::to_string(w.attention_norm.size() + w.ffn_norm.size() + w.norm.size()) +
                        " norm weights, the config " + std::to_string(L) + " and " + std::to_string((2 * L + 1) * d));
    expect(w.tok_embeddings, std::size_t(c.input_vocab()), d, "tok_embeddings");
    const std::size_t kv = c.kv_dim(), hd = c.hidden_dim;
    layers_.assign(L, {});
    for (std::size_t l = 0; l < L; ++l) {
      const llama_compact_weights::layer& in = w.layers[l];
      const std::string at = "layer " + std::to_string(l) + " ";
      expect(in.wq, d, d, at + "wq");
      expect(in.wk, kv, d, at + "wk");
      expect(in.wv, kv, d, at + "wv");
      expect(in.wo, d, d, at + "wo");
      expect(in.w1, hd, d, at + "w1");
      expect(in.w3, hd, d, at + "w3");
      expect(in.w2, d, hd, at + "w2");
      layers_[l].qkv.compact = compact_stack({in.wq, in.wk, in.wv});
      layers_[l].wo.compact = compact_stack({in.wo});
      layers_[l].w13.compact = compact_stack({in.w1, in.w3});
      layers_[l].w2.compact = compact_stack({in.w2});
    }
    compact_matrix classifier = c.shared_classifier ? w.tok_embeddings : w.output;
    if (c.shared_classifier) classifier.rows = V;  // the predicted rows of tok_embeddings
    expect(classifier, V, d, "output");
    classifier_.compact = compact_stack({classifier});
    if constexpr (detail::row_groups) interleave_matrices();
    weight_bytes_ = classifier_.compact.bytes();
    for (const layer_kernels& k : layers_)
      for (const projection* m : {&k.qkv, &k.wo, &k.w13, &k.w2}) weight_bytes_ += m->compact.bytes();
  }

  // AVX-512 VNNI builds: every Q8_0 and Q4_0 matrix interleaved 16 rows at a time (interleave)
  // into one buffer of the matrices' size, which copies of the model share. When the weights lie
  // in a file mapping, its pages of each matrix go back once copied, so the model holds its
  // weights once (the embedding rows, still read from the file, come back as tokens need them).
  void interleave_matrices() {
    std::vector<compact_stack*> stacks = {&classifier_.compact};
    for (layer_kernels& k : layers_)
      for (projection* p : {&k.qkv, &k.wo, &k.w13, &k.w2}) stacks.push_back(&p->compact);
    std::size_t bytes = 0;
    for (const compact_stack* s : stacks)
      for (const compact_matrix& m : s->parts())
        if (detail::can_interleave(m.type)) bytes += interleaved_bytes(m.type, m.rows, m.cols);
    if (bytes == 0) return;
    unsigned char* at = detail::huge_page_allocator<unsigned char>().allocate(bytes);
    interleaved_.reset(
        at, [bytes](unsigned char* p) { detail::huge_page_allocator<unsigned char>().deallocate(p, bytes); });
    for (compact_stack* s : stacks) {
      std::vector<compact_matrix> parts = s->parts();
      for (compact_matrix& m : parts) {
        if (!detail::can_interleave(m.type)) continue;
        const compact_matrix in_file = m;
        m = interleave(in_file, at);
        at += interleaved_bytes(m.type, m.rows, m.cols);
        if (compact_.storage_is_mapped) detail::release_mapped_pages(in_file.data, in_file.bytes());
      }
      *s = compact_stack(std::move(parts));
    }
  }

  // Throws unless every logit is finite: a non-finite weight read in place is named (the loaders
  // leave the values of its matrices to this check: llama_compact_weights), or else the
  // activations overflowed. A bit test over the rows, next to nothing beside the classifier.
  void require_finite_logits(std::span<const float> logits) const {
    const compact_matrix as_row{weight_type::f32, reinterpret_cast<const unsigned char*>(logits.data()), 1,
                                logits.size()};
    if (row_is_finite(as_row, 0)) return;
    if (is_compact()) require_finite(compact_);
    auto non_finite = [](float v) {  // the bit test again: -ffast-math may fold std::isfinite to true
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      return (bits & 0x7f800000u) == 0x7f800000u;
    };
    const auto at = std::size_t(std::find_if(logits.begin(), logits.end(), non_finite) - logits.begin());
    const std::size_t V = vocab_size();
    throw error("llama_model: logit " + std::to_string(at % V) + " of output row " + std::to_string(at / V) + " is " +
                std::to_string(logits[at]) + " although every weight is finite: the activations overflowed");
  }

  // Token t's embedding row into out (dim floats).
  void embed(token_id t, float* out) const noexcept {
    if (is_compact()) dequantize_row(compact_.tok_embeddings, std::size_t(t), out);
    else std::copy_n(w_.tok_embeddings() + std::size_t(t) * std::size_t(config_.dim), config_.dim, out);
  }
  const float* attention_norm(int l) const noexcept {
    return is_compact() ? compact_.attention_norm.data() + std::size_t(l) * std::size_t(config_.dim)
                        : w_.attention_norm(l);
  }
  const float* ffn_norm(int l) const noexcept {
    return is_compact() ? compact_.ffn_norm.data() + std::size_t(l) * std::size_t(config_.dim) : w_.ffn_norm(l);
  }
  const float* final_norm() const noexcept { return is_compact() ? compact_.norm.data() : w_.norm(); }

  // The attention shape and the RoPE table.
  void init() {
    const llama_config& c = config_;
    attention_ = {std::size_t(c.n_heads), std::size_t(c.n_kv_heads), std::size_t(c.head_size())};
    c.rope_table(rope_cos_, rope_sin_);
  }

  llama_config config_;
  llama_weights w_;                // f32 models
  llama_compact_weights compact_;  // models read in place
  detail::attention_shape attention_;
  std::vector<layer_kernels> layers_;
  projection classifier_;
  std::shared_ptr<unsigned char> interleaved_;  // Q8_0, Q4_0 matrices as the kernels read them (interleave)
  std::size_t weight_bytes_ = 0;                // weights read per token
  kv_cache_type kv_type_ = kv_cache_type::f32;  // what new_state's caches store
  // Over 8 MiB of weights a model no longer fits the private caches of a few cores
  // (stories260K's 1 MB does; the 15M shape's 60 MB does not).
  bool streamed() const noexcept { return weight_bytes_ > (std::size_t{8} << 20); }
  std::vector<float> rope_cos_, rope_sin_;
};

}  // namespace ipa
