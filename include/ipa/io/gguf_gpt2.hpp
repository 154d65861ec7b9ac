// SPDX-License-Identifier: MIT
// GGUF's `gpt2` architecture and its byte-level BPE tokenizer (tokenizer.ggml.model = "gpt2"),
// with llama.cpp's names: token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output,
// ffn_norm, ffn_up, ffn_down}.{weight,bias}, output_norm, output. ggml stores a projection with
// ne0 = in, i.e. row-major (out, in): gpt2_weights' layout, no transpose.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/io/gguf.hpp"
#include "ipa/model/gpt2_weights.hpp"
#include "ipa/text/gpt2_tokenizer.hpp"

namespace ipa {

namespace detail {
// gpt2_layout's per-layer tensors and their GGUF names (after "blk.N.")
inline constexpr std::pair<const char*, const char*> gguf_gpt2_layer_names[] = {
    {"ln_1.weight", "attn_norm.weight"},          {"ln_1.bias", "attn_norm.bias"},
    {"attn.c_attn.weight", "attn_qkv.weight"},    {"attn.c_attn.bias", "attn_qkv.bias"},
    {"attn.c_proj.weight", "attn_output.weight"}, {"attn.c_proj.bias", "attn_output.bias"},
    {"ln_2.weight", "ffn_norm.weight"},           {"ln_2.bias", "ffn_norm.bias"},
    {"mlp.c_fc.weight", "ffn_up.weight"},         {"mlp.c_fc.bias", "ffn_up.bias"},
    {"mlp.c_proj.weight", "ffn_down.weight"},     {"mlp.c_proj.bias", "ffn_down.bias"}};
}  // namespace detail

/// The architecture a GGUF file declares (general.architecture).
inline std::string gguf_architecture(const gguf_file& f) {
  return f.value("general.architecture").as_string("general.architecture");
}

/// A `gpt2`-architecture GGUF as gpt2_weights.
inline gpt2_weights load_gguf_gpt2(const gguf_file& f) {
  const std::string arch = gguf_architecture(f);
  if (arch != "gpt2") throw io_error(f.where() + ": architecture '" + arch + "' is not gpt2");
  auto get = [&](const std::string& key) {
    const long long v = f.value("gpt2." + key).as_int("gpt2." + key);
    if (v <= 0 || v > (1 << 20))
      throw io_error(f.where() + ": gpt2." + key + " = " + std::to_string(v) + " is impossible");
    return int(v);
  };
  gpt2_config c;
  c.dim = get("embedding_length");
  c.hidden_dim = get("feed_forward_length");
  c.n_layers = get("block_count");
  c.n_heads = get("attention.head_count");
  c.seq_len = get("context_length");
  if (f.has("gpt2.attention.layer_norm_epsilon"))
    c.norm_eps = float(f.value("gpt2.attention.layer_norm_epsilon").as_double("layer_norm_epsilon"));
  auto emb = f.tensors().find("token_embd.weight");
  if (emb == f.tensors().end() || emb->second.dims.size() != 2)
    throw io_error(f.where() + ": no 2-D token_embd.weight");
  if (emb->second.dims[1] == 0 || emb->second.dims[1] > (1u << 20))
    throw io_error(f.where() + ": token_embd.weight has an impossible vocabulary size");
  c.vocab_size = int(emb->second.dims[1]);
  detail::check_config_fits(f, c);
  gpt2_weights w(c);
  auto put = [&](const std::string& slot, std::size_t layer, const std::string& name) {
    const tensor_slot& s = w.slot(slot);
    auto it = f.tensors().find(name);
    if (it == f.tensors().end()) throw io_error(f.where() + ": no tensor named '" + name + "'");
    const std::vector<std::uint64_t> want =
        s.rows == 1 ? std::vector<std::uint64_t>{s.cols} : std::vector<std::uint64_t>{s.cols, s.rows};
    if (it->second.dims != want)
      throw io_error(f.where() + ": tensor '" + name + "' has ggml dims " + detail::shape_text(it->second.dims) +
                     ", expected " + detail::shape_text(want));
    const auto v = f.floats(name, s.rows * s.cols);
    for (float x : v)
      if (!std::isfinite(x)) throw io_error(f.where() + ": tensor '" + name + "' holds a non-finite value");
    std::copy(v.begin(), v.end(), w.tensor(slot).begin() + std::ptrdiff_t(layer * s.rows * s.cols));
  };
  put("wte", 0, "token_embd.weight");
  put("wpe", 0, "position_embd.weight");
  put("ln_f.weight", 0, "output_norm.weight");
  put("ln_f.bias", 0, "output_norm.bias");
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& [slot, name] : detail::gguf_gpt2_layer_names)
      put(slot, l, "blk." + std::to_string(l) + "." + name);
  if (f.tensors().count("output.weight")) {  // llama.cpp's converter writes the tied head out
    const auto head = f.floats("output.weight", std::uint64_t(c.vocab_size) * std::uint64_t(c.dim));
    const auto wte = w.tensor("wte");
    if (!std::equal(head.begin(), head.end(), wte.begin()))
      throw io_error(f.where() +
                     ": output.weight differs from token_embd.weight; an untied GPT-2 head is not supported");
  }
  return w;
}

/// The byte-level BPE tokenizer of a GGUF (tokenizer.ggml.model = "gpt2"): tokens, merges and
/// the control tokens (token_type 3) as specials.
inline gpt2_tokenizer load_gguf_gpt2_tokenizer(const gguf_file& f) {
  const std::string model = f.value("tokenizer.ggml.model").as_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw io_error(f.where() + ": tokenizer.ggml.model '" + model + "' is not the byte-level BPE (gpt2) tokenizer");
  std::vector<std::string> tokens, merges;
  for (const auto& t : f.value("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens"))
    tokens.push_back(t.as_string("tokenizer.ggml.tokens[]"));
  if (f.has("tokenizer.ggml.merges"))
    for (const auto& m : f.value("tokenizer.ggml.merges").as_array("tokenizer.ggml.merges"))
      merges.push_back(m.as_string("tokenizer.ggml.merges[]"));
  std::vector<token_id> specials;
  if (f.has("tokenizer.ggml.token_type")) {
    const auto& types = f.value("tokenizer.ggml.token_type").as_array("tokenizer.ggml.token_type");
    if (types.size() != tokens.size())
      throw io_error(f.where() + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries for " +
                     std::to_string(tokens.size()) + " tokens");
    for (std::size_t i = 0; i < types.size(); ++i)
      if (types[i].as_int("tokenizer.ggml.token_type[]") == 3) specials.push_back(token_id(i));
  }
  return gpt2_tokenizer::from_tokens(tokens, merges, specials, f.where());
}

/// Writes a GPT-2 model (and its tokenizer, when given) as GGUF v3 with llama.cpp's names and
/// keys; F32, or F16 with `f16` (norms and biases stay F32). The tied head is written out as
/// output.weight too, as llama.cpp's converter does.
inline void save_gguf_gpt2(const std::string& path, const gpt2_weights& w, const gpt2_tokenizer* tok = nullptr,
                           bool f16 = false, const std::string& name = "ipa") {
  const gpt2_config& c = w.config();
  if (c.gelu != gelu_kind::tanh)
    throw config_error("save_gguf_gpt2: llama.cpp's gpt2 architecture computes the tanh GELU; this model uses erf");
  gguf_writer g;
  auto add = [&](const std::string& n, const std::string& slot, std::size_t layer) {
    const tensor_slot& s = w.slot(slot);
    const bool matrix = s.rows > 1;
    g.tensor(n, matrix ? std::vector<std::uint64_t>{s.cols, s.rows} : std::vector<std::uint64_t>{s.cols},
             w.tensor(slot).subspan(layer * s.rows * s.cols, s.rows * s.cols),
             f16 && matrix ? weight_type::f16 : weight_type::f32);
  };
  add("token_embd.weight", "wte", 0);
  add("position_embd.weight", "wpe", 0);
  add("output_norm.weight", "ln_f.weight", 0);
  add("output_norm.bias", "ln_f.bias", 0);
  add("output.weight", "wte", 0);
  for (std::size_t l = 0; l < std::size_t(c.n_layers); ++l)
    for (const auto& [slot, n] : detail::gguf_gpt2_layer_names) add("blk." + std::to_string(l) + "." + n, slot, l);
  g.str("general.architecture", "gpt2");
  g.str("general.name", name);
  g.u32("general.alignment", 32);
  g.u32("gpt2.context_length", std::uint32_t(c.seq_len));
  g.u32("gpt2.embedding_length", std::uint32_t(c.dim));
  g.u32("gpt2.feed_forward_length", std::uint32_t(c.hidden_dim));
  g.u32("gpt2.block_count", std::uint32_t(c.n_layers));
  g.u32("gpt2.attention.head_count", std::uint32_t(c.n_heads));
  g.f32("gpt2.attention.layer_norm_epsilon", c.norm_eps);
  if (tok) {
    const std::size_t V = tok->vocab_size();
    if (V != std::size_t(c.vocab_size))
      throw shape_error("save_gguf_gpt2: the tokenizer has " + std::to_string(V) + " tokens, the model " +
                        std::to_string(c.vocab_size));
    std::vector<std::string> tokens(V);
    std::vector<std::int32_t> types(V, 1);
    for (std::size_t i = 0; i < V; ++i) tokens[i] = tok->token_text(token_id(i));
    for (token_id id : tok->special_ids()) types[std::size_t(id)] = 3;
    g.str("tokenizer.ggml.model", "gpt2");
    g.strings("tokenizer.ggml.tokens", tokens);
    g.ints("tokenizer.ggml.token_type", types);
    g.strings("tokenizer.ggml.merges", tok->merge_list());
    if (tok->eot_id() >= 0) {
      g.u32("tokenizer.ggml.bos_token_id", std::uint32_t(tok->eot_id()));
      g.u32("tokenizer.ggml.eos_token_id", std::uint32_t(tok->eot_id()));
    }
  }
  g.save(path);
}

}  // namespace ipa
