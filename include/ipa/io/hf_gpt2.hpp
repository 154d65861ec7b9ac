// SPDX-License-Identifier: MIT
// Hugging Face GPT-2 folders: config.json + safetensors with names `transformer.h.N.attn.c_attn.weight`
// (what save_pretrained writes) or `h.N.attn.c_attn.weight` (the original openai-community/gpt2
// files). GPT-2's Conv1D stores projections (in, out); gpt2_weights holds (out, in), so the four
// projection weights are transposed on the way in and out. The causal-mask buffers some files
// carry (attn.bias, attn.masked_bias) are ignored; lm_head is tied to wte.
#pragma once
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/hf_folder.hpp"
#include "ipa/io/safetensors.hpp"
#include "ipa/model/gpt2_weights.hpp"

namespace ipa {

namespace detail {

// (rows, cols) -> (cols, rows)
inline std::vector<float> transposed(std::span<const float> w, std::size_t rows, std::size_t cols) {
  std::vector<float> out(w.size());
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) out[j * rows + i] = w[i * cols + j];
  return out;
}

// The stacked per-layer tensors of gpt2_layout and whether Hugging Face stores them as Conv1D.
struct gpt2_hf_tensor {
  const char* name;
  bool conv1d;
};
inline constexpr gpt2_hf_tensor gpt2_layer_tensors[] = {
    {"ln_1.weight", false},      {"ln_1.bias", false},         {"attn.c_attn.weight", true},
    {"attn.c_attn.bias", false}, {"attn.c_proj.weight", true}, {"attn.c_proj.bias", false},
    {"ln_2.weight", false},      {"ln_2.bias", false},         {"mlp.c_fc.weight", true},
    {"mlp.c_fc.bias", false},    {"mlp.c_proj.weight", true},  {"mlp.c_proj.bias", false}};

}  // namespace detail

/// Reads the GPT-2 hyper-parameters of a Hugging Face config.json.
inline gpt2_config gpt2_config_from_hf(const nlohmann::json& cfg, const std::string& where) {
  gpt2_config c;
  try {
    const std::string type = cfg.value("model_type", std::string("gpt2"));
    if (type != "gpt2") throw io_error(where + ": model_type '" + type + "' is not gpt2");
    constexpr long long big = 1 << 20, huge = 1 << 24;
    auto whole = [&](const char* key, std::optional<long long> fallback, long long hi) {
      return int(detail::config_whole(cfg, key, fallback, 1, hi, where));
    };
    c.dim = whole("n_embd", {}, big);
    c.n_layers = whole("n_layer", {}, big);
    c.n_heads = whole("n_head", {}, big);
    c.vocab_size = whole("vocab_size", {}, huge);
    c.seq_len = cfg.contains("n_positions") ? whole("n_positions", {}, huge) : whole("n_ctx", {}, huge);
    c.hidden_dim = whole("n_inner", 4LL * c.dim, big);
    c.norm_eps = cfg.value("layer_norm_epsilon", 1e-5f);
    const std::string act = cfg.value("activation_function", std::string("gelu_new"));
    if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") c.gelu = gelu_kind::tanh;
    else if (act == "gelu") c.gelu = gelu_kind::erf;
    else throw io_error(where + ": activation_function '" + act + "' is not supported (gelu_new, gelu)");
    if (!cfg.value("scale_attn_weights", true)) throw io_error(where + ": scale_attn_weights = false is not supported");
    if (cfg.value("scale_attn_by_inverse_layer_idx", false))
      throw io_error(where + ": scale_attn_by_inverse_layer_idx = true is not supported");
    if (!cfg.value("tie_word_embeddings", true))
      throw io_error(where + ": an untied lm_head (tie_word_embeddings = false) is not supported");
    c.validate(where);
  } catch (const nlohmann::json::exception& e) {
    throw io_error(where + ": missing or mistyped field: " + e.what());
  } catch (const config_error& e) {
    throw io_error(e.what());
  }
  return c;
}

/// Reads a Hugging Face GPT-2 folder (single or sharded safetensors; F32, F16, BF16).
inline gpt2_weights load_hf_gpt2(const std::string& dir) {
  const hf_folder folder(dir);
  const gpt2_config c = gpt2_config_from_hf(folder.config(), dir + "/config.json");
  if (c.parameter_count() > folder.held_values())
    throw io_error(dir + "/config.json describes a model of " + std::to_string(c.parameter_count()) +
                   " parameters, the safetensors files hold " + std::to_string(folder.held_values()) + " values");
  const std::string prefix = folder.contains("transformer.wte.weight") ? "transformer." : "";
  gpt2_weights w(c);
  const std::uint64_t d = c.dim, V = c.vocab_size, S = c.seq_len;
  auto put = [&](const std::vector<float>& v, const std::string& slot, std::size_t offset) {
    std::copy(v.begin(), v.end(), w.tensor(slot).begin() + std::ptrdiff_t(offset));
  };
  put(folder.floats(prefix + "wte.weight", {V, d}), "wte", 0);
  put(folder.floats(prefix + "wpe.weight", {S, d}), "wpe", 0);
  put(folder.floats(prefix + "ln_f.weight", {d}), "ln_f.weight", 0);
  put(folder.floats(prefix + "ln_f.bias", {d}), "ln_f.bias", 0);
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& t : detail::gpt2_layer_tensors) {
      const tensor_slot& s = w.slot(t.name);
      const std::string name = prefix + "h." + std::to_string(l) + "." + t.name;
      if (t.conv1d)
        put(detail::transposed(folder.floats(name, {s.cols, s.rows}), s.cols, s.rows), t.name, l * s.rows * s.cols);
      else put(folder.floats(name, {s.rows * s.cols}), t.name, l * s.rows * s.cols);
    }
  if (folder.contains("lm_head.weight")) {
    const auto head = folder.floats("lm_head.weight", {V, d});
    if (!std::equal(head.begin(), head.end(), w.tensor("wte").begin()))
      throw io_error(dir + ": lm_head.weight differs from wte.weight; an untied GPT-2 head is not supported");
  }
  return w;
}

/// Writes a Hugging Face GPT-2 folder (config.json + model.safetensors, F32, `transformer.`
/// names and Conv1D layout as save_pretrained writes them), atomically per file.
inline void save_hf_gpt2(const std::string& dir, const gpt2_weights& w) {
  const gpt2_config& c = w.config();
  std::filesystem::create_directories(dir);
  safetensors_writer st;
  const std::uint64_t d = c.dim, V = c.vocab_size, S = c.seq_len;
  st.add_f32("transformer.wte.weight", {V, d}, w.tensor("wte"));
  st.add_f32("transformer.wpe.weight", {S, d}, w.tensor("wpe"));
  st.add_f32("transformer.ln_f.weight", {d}, w.tensor("ln_f.weight"));
  st.add_f32("transformer.ln_f.bias", {d}, w.tensor("ln_f.bias"));
  std::vector<std::vector<float>> keep;  // transposed copies must outlive st
  keep.reserve(std::size_t(c.n_layers) * 4);
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& t : detail::gpt2_layer_tensors) {
      const tensor_slot& s = w.slot(t.name);
      auto part = w.tensor(t.name).subspan(l * s.rows * s.cols, s.rows * s.cols);
      const std::string name = "transformer.h." + std::to_string(l) + "." + t.name;
      if (t.conv1d) {
        keep.push_back(detail::transposed(part, s.rows, s.cols));
        st.add_f32(name, {s.cols, s.rows}, keep.back());
      } else {
        st.add_f32(name, {s.rows * s.cols}, part);
      }
    }
  st.metadata("format", "pt");
  st.save(dir + "/model.safetensors");
  const nlohmann::json cfg = {{"architectures", {"GPT2LMHeadModel"}},
                              {"model_type", "gpt2"},
                              {"vocab_size", c.vocab_size},
                              {"n_positions", c.seq_len},
                              {"n_ctx", c.seq_len},
                              {"n_embd", c.dim},
                              {"n_layer", c.n_layers},
                              {"n_head", c.n_heads},
                              {"n_inner", c.hidden_dim},
                              {"activation_function", c.gelu == gelu_kind::tanh ? "gelu_new" : "gelu"},
                              {"layer_norm_epsilon", c.norm_eps},
                              {"resid_pdrop", 0.0},
                              {"embd_pdrop", 0.0},
                              {"attn_pdrop", 0.0},
                              {"scale_attn_weights", true},
                              {"tie_word_embeddings", true},
                              {"torch_dtype", "float32"}};
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
}

}  // namespace ipa
