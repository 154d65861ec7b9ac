// SPDX-License-Identifier: MIT
// Hugging Face Llama folders: config.json + model.safetensors (or sharded, with
// model.safetensors.index.json), tensor names model.layers.N.self_attn.q_proj.weight, ...
// Hugging Face stores q_proj/k_proj for its rotate-half RoPE: each head's rows are the even
// pair members then the odd ones. ipa's f32 weights (like llama2.c and llama.cpp) are stored for
// interleaved pairs, so load_hf_llama permutes q and k rows on the way in and save_hf_llama back
// on the way out; load_hf_llama_compact reads the rows where they lie and rotates halves instead.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/bf16.hpp"
#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/hf_folder.hpp"
#include "ipa/io/safetensors.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

namespace detail {

// Row order of one projection: hf[h*hs + j*hs/2 + i] = meta[h*hs + 2i + j] (HF's `permute`).
inline std::vector<float> permute_rows(std::span<const float> w, std::size_t heads, std::size_t cols, bool to_hf) {
  const std::size_t rows = w.size() / cols, hs = rows / heads, half = hs / 2;
  std::vector<float> out(w.size());
  for (std::size_t h = 0; h < heads; ++h)
    for (std::size_t i = 0; i < half; ++i)
      for (std::size_t j = 0; j < 2; ++j) {
        const std::size_t meta = h * hs + 2 * i + j, hf = h * hs + j * half + i;
        const std::size_t from = to_hf ? meta : hf, to = to_hf ? hf : meta;
        std::copy_n(w.data() + from * cols, cols, out.data() + to * cols);
      }
  return out;
}

struct hf_name {
  const char* slot;
  const char* suffix;
};
inline constexpr hf_name hf_layer_names[] = {{"wq", "self_attn.q_proj.weight"},
                                             {"wk", "self_attn.k_proj.weight"},
                                             {"wv", "self_attn.v_proj.weight"},
                                             {"wo", "self_attn.o_proj.weight"},
                                             {"w1", "mlp.gate_proj.weight"},
                                             {"w2", "mlp.down_proj.weight"},
                                             {"w3", "mlp.up_proj.weight"},
                                             {"attention_norm", "input_layernorm.weight"},
                                             {"ffn_norm", "post_attention_layernorm.weight"}};

}  // namespace detail

/// Writes a Hugging Face Llama folder (config.json + model.safetensors) with its matrices as
/// `dtype` ("F32", "F16" or "BF16"; norms stay F32), atomically per file.
inline void save_hf_llama(const std::string& dir, const llama_weights& w, const std::string& dtype = "F32") {
  const llama_config& c = w.config();
  if (dtype != "F32" && dtype != "F16" && dtype != "BF16")
    throw config_error("save_hf_llama: dtype '" + dtype + "'; expected F32, F16 or BF16");
  if (c.extra_tokens != 0)
    throw config_error("save_hf_llama: a model with input-only tokens (Quark's) has no Hugging Face equivalent");
  std::filesystem::create_directories(dir);
  safetensors_writer st;
  auto add_matrix = [&](const std::string& name, std::vector<std::uint64_t> shape, std::span<const float> v) {
    if (dtype == "F32") return st.add_f32(name, std::move(shape), v);
    std::vector<std::uint16_t> half(v.size());
    std::transform(v.begin(), v.end(), half.begin(), dtype == "F16" ? to_f16 : to_bf16);
    st.add<std::uint16_t>(name, dtype, std::move(shape), half);
  };
  const std::size_t d = c.dim, V = c.vocab_size;
  add_matrix("model.embed_tokens.weight", {V, d}, w.tensor("tok_embeddings").subspan(0, V * d));
  st.add_f32("model.norm.weight", {d}, w.tensor("norm"));
  if (!c.shared_classifier) add_matrix("lm_head.weight", {V, d}, w.tensor("output"));
  std::vector<std::vector<float>> keep;  // permuted copies must outlive st
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& n : detail::hf_layer_names) {
      const tensor_slot& s = w.slot(n.slot);
      auto part = w.tensor(n.slot).subspan(l * s.rows * s.cols, s.rows * s.cols);
      const std::string name = "model.layers." + std::to_string(l) + "." + n.suffix;
      std::vector<std::uint64_t> shape =
          s.rows == 1 ? std::vector<std::uint64_t>{s.cols} : std::vector<std::uint64_t>{s.rows, s.cols};
      if (s.rows == 1) {
        st.add_f32(name, shape, part);  // a norm
      } else if (std::string(n.slot) == "wq" || std::string(n.slot) == "wk") {
        keep.push_back(
            detail::permute_rows(part, std::string(n.slot) == "wq" ? c.n_heads : c.n_kv_heads, s.cols, true));
        add_matrix(name, shape, keep.back());
      } else {
        add_matrix(name, shape, part);
      }
    }
  st.metadata("format", "pt");
  st.save(dir + "/model.safetensors");
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_size", c.dim},
                              {"intermediate_size", c.hidden_dim},
                              {"num_attention_heads", c.n_heads},
                              {"num_key_value_heads", c.n_kv_heads},
                              {"num_hidden_layers", c.n_layers},
                              {"vocab_size", c.vocab_size},
                              {"max_position_embeddings", c.seq_len},
                              {"rms_norm_eps", c.norm_eps},
                              {"rope_theta", c.rope_theta},
                              {"tie_word_embeddings", c.shared_classifier},
                              {"hidden_act", "silu"},
                              {"torch_dtype", dtype == "F32"   ? "float32"
                                              : dtype == "F16" ? "float16"
                                                               : "bfloat16"}};
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
}

namespace detail {

// The llama_config of a Hugging Face Llama folder, refusing what ipa's Llama does not implement
// and a config that describes more weights than the files hold (before anything is allocated).
inline llama_config hf_llama_config(const hf_folder& folder) {
  const nlohmann::json& cfg = folder.config();
  const std::string& dir = folder.dir();
  llama_config c;
  try {
    const std::string type = cfg.value("model_type", std::string("llama"));
    if (type != "llama") folder.config_fail("model_type '" + type + "' is not llama");
    constexpr long long big = 1 << 20, huge = 1 << 24;
    c.dim = int(folder.whole("hidden_size", {}, 1, big));
    c.hidden_dim = int(folder.whole("intermediate_size", {}, 1, big));
    c.n_heads = int(folder.whole("num_attention_heads", {}, 1, big));
    c.n_kv_heads = int(folder.whole("num_key_value_heads", c.n_heads, 1, big));
    c.n_layers = int(folder.whole("num_hidden_layers", {}, 1, big));
    c.vocab_size = int(folder.whole("vocab_size", {}, 1, huge));
    c.seq_len = int(folder.whole("max_position_embeddings", 2048, 1, huge));
    c.norm_eps = float(folder.number("rms_norm_eps", 1e-6, 0, 1));
    c.rope_theta = float(folder.number("rope_theta", 10000, 0, 1e12));
    c.shared_classifier = folder.flag("tie_word_embeddings", false);
    // what ipa's Llama does not implement is refused, not ignored
    folder.only("hidden_act", "silu", "an activation other than SiLU");
    folder.only("rope_scaling", nullptr, "RoPE scaling");
    folder.only("attention_bias", false, "attention biases");
    folder.only("mlp_bias", false, "MLP biases");
    if (cfg.contains("head_dim") && !cfg["head_dim"].is_null())
      folder.only("head_dim", c.dim / std::max(1, c.n_heads), "a head size other than hidden_size / heads");
    c.validate(dir + "/config.json");
  } catch (const nlohmann::json::exception& e) {
    folder.config_fail(std::string("missing or mistyped field: ") + e.what());
  } catch (const config_error& e) {
    throw io_error(e.what());
  }
  // the config must describe what the files hold before the model is allocated
  if (c.parameter_count() > folder.held_values())
    throw io_error(dir + "/config.json describes a model of " + std::to_string(c.parameter_count()) +
                   " parameters, the safetensors files hold " + std::to_string(folder.held_values()) + " values");
  return c;
}

}  // namespace detail

/// Reads a Hugging Face Llama folder (single or sharded safetensors; F32, F16 or BF16) into f32
/// weights, q and k rows permuted for interleaved-pair RoPE.
inline llama_weights load_hf_llama(const hf_folder& folder) {
  const llama_config c = detail::hf_llama_config(folder);
  llama_weights w(c);
  const std::uint64_t d = c.dim, V = c.vocab_size;
  auto copy = [&](const std::vector<float>& v, const char* slot, std::size_t offset) {
    std::copy(v.begin(), v.end(), w.tensor(slot).begin() + std::ptrdiff_t(offset));
  };
  copy(folder.floats("model.embed_tokens.weight", {V, d}), "tok_embeddings", 0);
  copy(folder.floats("model.norm.weight", {d}), "norm", 0);
  if (!c.shared_classifier) copy(folder.floats("lm_head.weight", {V, d}), "output", 0);
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& n : detail::hf_layer_names) {
      const tensor_slot& s = w.slot(n.slot);
      auto v =
          folder.floats("model.layers." + std::to_string(l) + "." + n.suffix,
                        s.rows == 1 ? std::vector<std::uint64_t>{s.cols} : std::vector<std::uint64_t>{s.rows, s.cols});
      if (std::string(n.slot) == "wq" || std::string(n.slot) == "wk")
        v = detail::permute_rows(v, std::string(n.slot) == "wq" ? c.n_heads : c.n_kv_heads, s.cols, false);
      copy(v, n.slot, l * s.rows * s.cols);
    }
  return w;
}

/// A Hugging Face Llama folder read where it lies (each shard mapped): its F32, F16 or BF16
/// matrices compact, no copy (their values checked when used, see llama_compact_weights), q and
/// k rows as stored (rope_pairs::halves); norms as floats. The result keeps the files alive.
inline llama_compact_weights load_hf_llama_compact(const hf_folder& folder) {
  llama_compact_weights w;
  w.config = detail::hf_llama_config(folder);
  const llama_config& c = w.config;
  const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim, V = c.vocab_size;
  w.rope = rope_pairs::halves;
  auto matrix = [&](const std::string& name, std::size_t rows, std::size_t cols) {
    const compact_matrix m = folder.compact(name, rows, cols);
    w.sources.push_back({folder.where(name), name, m});
    return m;
  };
  auto norm = [&](std::vector<float>& into, const std::string& name) {
    const std::vector<float> v = folder.floats(name, {d});
    into.insert(into.end(), v.begin(), v.end());
  };
  w.tok_embeddings = matrix("model.embed_tokens.weight", V, d);
  if (!c.shared_classifier) w.output = matrix("lm_head.weight", V, d);
  norm(w.norm, "model.norm.weight");
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    llama_compact_weights::layer& layer = w.layers.emplace_back();
    norm(w.attention_norm, b + "input_layernorm.weight");
    norm(w.ffn_norm, b + "post_attention_layernorm.weight");
    layer.wq = matrix(b + "self_attn.q_proj.weight", d, d);
    layer.wk = matrix(b + "self_attn.k_proj.weight", kv, d);
    layer.wv = matrix(b + "self_attn.v_proj.weight", kv, d);
    layer.wo = matrix(b + "self_attn.o_proj.weight", d, d);
    layer.w1 = matrix(b + "mlp.gate_proj.weight", hd, d);
    layer.w2 = matrix(b + "mlp.down_proj.weight", d, hd);
    layer.w3 = matrix(b + "mlp.up_proj.weight", hd, d);
  }
  w.storage = folder.storage();
  return w;
}

/// load_hf_llama and load_hf_llama_compact of the folder at `dir`.
inline llama_weights load_hf_llama(const std::string& dir) { return load_hf_llama(hf_folder(dir)); }
inline llama_compact_weights load_hf_llama_compact(const std::string& dir) {
  return load_hf_llama_compact(hf_folder(dir));
}

}  // namespace ipa
