// SPDX-License-Identifier: MIT
// GPT-2: forward, loss and every gradient against nanoGPT's float64 goldens (cross-checked by
// the golden's authors against picoGPT and llm.c), the erf-GELU variant, KV-cache decoding
// against the full forward, and the Hugging Face reader/writer with its error paths.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ipa/io/gguf_gpt2.hpp>
#include <ipa/io/hf_gpt2.hpp>
#include <nlohmann/json.hpp>

#include <ipa/decode/policy.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/model/gpt2.hpp>
#include <ipa/model/gpt2_train.hpp>
#include <ipa/train/losses.hpp>

#include "test_data.hpp"

namespace {

std::string gpt2_dir() { return ipa_test::golden_dir() + "/gpt2_tiny"; }

std::vector<ipa::token_id> golden_tokens() {
  const auto t = ipa::load_npy<ipa::token_id>(gpt2_dir() + "/tokens.npy");
  return {t.begin(), t.end()};
}

template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  REQUIRE(std::size(a) == std::size(b));
  double m = 0;
  for (std::size_t i = 0; i < std::size(a); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace

TEST_CASE("GPT-2 (gpt2_tiny): logits, loss and all 28 gradients match nanoGPT's float64 goldens") {
  if (!(ipa_test::have(gpt2_dir() + "/model.safetensors") && ipa_test::have(gpt2_dir() + "/logits_f64.npy"))) return;
  const ipa::gpt2_weights w = ipa::load_hf_gpt2(gpt2_dir());
  CHECK(w.config().gelu == ipa::gelu_kind::tanh);
  CHECK(w.config().hidden_dim == 256);
  const auto tokens = golden_tokens();
  const std::size_t B = 2, T = 48, V = 512;
  REQUIRE(tokens.size() == B * T);

  ipa::trainable_gpt2<float> model(w);
  model.forward(tokens, B, T);
  const auto logits_f64 = ipa::load_npy<double>(gpt2_dir() + "/logits_f64.npy");
  const double logit_err = max_abs_diff(model.logits(), logits_f64);
  MESSAGE("float32 logits: max |diff| to the float64 golden = " << logit_err);
  CHECK(logit_err < 1e-5);

  std::vector<ipa::token_id> targets(B * T, -1);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t t = 0; t + 1 < T; ++t) targets[b * T + t] = tokens[b * T + t + 1];
  std::vector<float> dlogits(B * T * V);
  const double loss = ipa::cross_entropy<float>(model.logits(), targets, V, dlogits);
  CHECK(std::abs(loss - ipa::load_npy<double>(gpt2_dir() + "/loss_f64.npy")[0]) < 2e-6);
  model.zero_grad();
  model.backward(dlogits);

  // golden grads use Hugging Face names and the Conv1D (in, out) layout
  double worst = 0;
  std::size_t checked = 0;
  auto compare = [&](const std::string& hf_name, std::vector<float> got) {
    const auto expected = ipa::load_npy<float>(gpt2_dir() + "/grad_transformer." + hf_name + ".npy");
    REQUIRE(expected.size() == got.size());
    double max_ref = 0;
    for (float e : expected) max_ref = std::max(max_ref, std::abs(double(e)));
    const double diff = max_abs_diff(got, expected);
    INFO(hf_name << ": max |diff| " << diff << ", max |golden| " << max_ref);
    CHECK(diff <= 1e-4 * max_ref);
    worst = std::max(worst, diff / max_ref);
    ++checked;
  };
  auto grad = [&](const std::string& name) {
    const auto g = model.gradient(name);
    return std::vector<float>(g.begin(), g.end());
  };
  compare("wte.weight", grad("wte"));
  compare("wpe.weight", grad("wpe"));
  compare("ln_f.weight", grad("ln_f.weight"));
  compare("ln_f.bias", grad("ln_f.bias"));
  for (const auto& t : ipa::detail::gpt2_layer_tensors) {
    const ipa::tensor_slot& s = w.slot(t.name);
    const auto all = model.gradient(t.name);
    for (std::size_t l = 0; l < 2; ++l) {
      const auto part = all.subspan(l * s.rows * s.cols, s.rows * s.cols);
      compare("h." + std::to_string(l) + "." + t.name,
              t.conv1d ? ipa::detail::transposed(part, s.rows, s.cols) : std::vector<float>(part.begin(), part.end()));
    }
  }
  CHECK(checked == 28);
  MESSAGE("28 gradient tensors; worst max|diff| / max|golden| = " << worst);

  // in float64 the same code reproduces the golden; what remains comes from the config's float
  // epsilon (1e-5f is 1e-5 - 2.5e-13, against activation variances near 1e-3)
  ipa::trainable_gpt2<double> exact(w);
  exact.forward(tokens, B, T);
  const double exact_err = max_abs_diff(exact.logits(), logits_f64);
  MESSAGE("float64 logits: max |diff| = " << exact_err);
  CHECK(exact_err < 1e-9);
}

TEST_CASE("GPT-2 with the exact erf GELU matches nanoGPT's unmodified model") {
  const std::string variant = gpt2_dir() + "/variant_gelu_erf/logits.npy";
  if (!(ipa_test::have(gpt2_dir() + "/model.safetensors") && ipa_test::have(variant))) return;
  ipa::gpt2_weights tanh_w = ipa::load_hf_gpt2(gpt2_dir());
  ipa::gpt2_config c = tanh_w.config();
  c.gelu = ipa::gelu_kind::erf;
  ipa::trainable_gpt2<double> model(ipa::gpt2_weights(c, {tanh_w.data().begin(), tanh_w.data().end()}));
  model.forward(golden_tokens(), 2, 48);
  const double err = max_abs_diff(model.logits(), ipa::load_npy<float>(variant));
  CHECK(err < 1e-6);  // the golden is float32-rounded; tanh vs erf differ by 8.3e-6
  ipa::trainable_gpt2<double> tanh_model(tanh_w);
  tanh_model.forward(golden_tokens(), 2, 48);
  CHECK(max_abs_diff(tanh_model.logits(), ipa::load_npy<float>(variant)) > 2e-6);
}

TEST_CASE("GPT-2 decoding with the KV cache gives the full forward's logits, ragged batches included") {
  if (!(ipa_test::have(gpt2_dir() + "/model.safetensors") && ipa_test::have(gpt2_dir() + "/logits_f64.npy"))) return;
  const ipa::gpt2_model model(ipa::load_hf_gpt2(gpt2_dir()));
  const auto tokens = golden_tokens();
  const auto golden = ipa::load_npy<double>(gpt2_dir() + "/logits_f64.npy");
  const std::size_t T = 48, V = model.vocab_size();
  // row 0 prefills 5 tokens, row 1 prefills 17; then one token per step until both hold 48
  const std::size_t start[2] = {5, 17};
  ipa::prompt_list prompts = {{tokens.begin(), tokens.begin() + 5}, {tokens.begin() + 48, tokens.begin() + 48 + 17}};
  auto state = model.new_state(2);
  std::vector<float> logits(2 * V);
  model.prefill(state, prompts, logits);
  double worst = 0;
  auto check_row = [&](std::size_t b, std::size_t pos, const float* row) {
    for (std::size_t v = 0; v < V; ++v) worst = std::max(worst, std::abs(row[v] - golden[(b * T + pos) * V + v]));
  };
  check_row(0, start[0] - 1, logits.data());
  check_row(1, start[1] - 1, logits.data() + V);
  for (std::size_t t = start[0]; t < T; ++t) {
    std::vector<int> rows;
    std::vector<ipa::token_id> next;
    rows.push_back(0), next.push_back(tokens[t]);
    const std::size_t t1 = t + start[1] - start[0];
    if (t1 < T) rows.push_back(1), next.push_back(tokens[T + t1]);
    std::vector<float> out(rows.size() * V);
    model.step(state, rows, next, out);
    check_row(0, t, out.data());
    if (rows.size() == 2) check_row(1, t1, out.data() + V);
  }
  MESSAGE("KV-cache decoding vs float64 golden: max |diff| = " << worst);
  CHECK(worst < 1e-5);
  // the context is the position table: one more token is a clear error
  std::vector<int> row0 = {0};
  std::vector<ipa::token_id> tok = {1};
  for (int i = 0; i < 16; ++i) model.step(state, row0, tok, std::span<float>(logits.data(), V));
  CHECK_THROWS_WITH_AS(model.step(state, row0, tok, std::span<float>(logits.data(), V)),
                       doctest::Contains("context holds 64"), ipa::shape_error);
}

TEST_CASE("GPT-2 Hugging Face folders: write -> read is exact; unprefixed names; clear errors") {
  if (!ipa_test::have(gpt2_dir() + "/model.safetensors")) return;
  const ipa::gpt2_weights w = ipa::load_hf_gpt2(gpt2_dir());
  const auto tmp = std::filesystem::temp_directory_path() / "ipa_gpt2_test";
  std::filesystem::remove_all(tmp);
  const std::string out = (tmp / "hf").string();
  ipa::save_hf_gpt2(out, w);
  const ipa::gpt2_weights back = ipa::load_hf_gpt2(out);
  CHECK(std::equal(back.data().begin(), back.data().end(), w.data().begin(), w.data().end()));

  // the original openai-community/gpt2 files: no `transformer.` prefix, mask buffers, lm_head
  {
    const ipa::safetensors_file src = ipa::safetensors_file::load(gpt2_dir() + "/model.safetensors");
    ipa::safetensors_writer st;
    std::vector<std::vector<float>> keep;
    keep.reserve(src.tensors().size() + 2);
    for (const auto& [name, e] : src.tensors()) {
      keep.push_back(src.floats(name, ipa::any_size));
      st.add_f32(name.substr(std::string("transformer.").size()), e.shape, keep.back());
    }
    keep.push_back(std::vector<float>(64 * 64, 1.0f));
    st.add_f32("h.0.attn.bias", {1, 1, 64, 64}, keep.back());
    keep.push_back(src.floats("transformer.wte.weight", ipa::any_size));
    st.add_f32("lm_head.weight", {512, 64}, keep.back());
    const std::string plain = (tmp / "plain").string();
    std::filesystem::create_directories(plain);
    st.save(plain + "/model.safetensors");
    std::filesystem::copy_file(gpt2_dir() + "/config.json", plain + "/config.json");
    const ipa::gpt2_weights p = ipa::load_hf_gpt2(plain);
    CHECK(std::equal(p.data().begin(), p.data().end(), w.data().begin(), w.data().end()));
  }

  // a Conv1D weight stored in nn.Linear's (out, in) layout is named, not silently transposed
  {
    ipa::safetensors_writer st;
    const ipa::safetensors_file src = ipa::safetensors_file::load(out + "/model.safetensors");
    std::vector<std::vector<float>> keep;
    keep.reserve(src.tensors().size());
    for (const auto& [name, e] : src.tensors()) {
      keep.push_back(src.floats(name, ipa::any_size));
      auto shape = e.shape;
      if (name == "transformer.h.1.mlp.c_fc.weight") std::swap(shape[0], shape[1]);
      st.add_f32(name, shape, keep.back());
    }
    st.save(out + "/model.safetensors");
    CHECK_THROWS_WITH_AS(ipa::load_hf_gpt2(out), doctest::Contains("has shape [256, 64], expected [64, 256]"),
                         ipa::io_error);
  }
  std::ofstream(out + "/config.json") << R"({"model_type": "gpt2", "n_embd": 64})";
  CHECK_THROWS_WITH_AS(ipa::load_hf_gpt2(out), doctest::Contains("config.json: missing field 'n_layer'"),
                       ipa::io_error);
  std::ofstream(out + "/config.json") << R"({"model_type": "llama"})";
  CHECK_THROWS_WITH_AS(ipa::load_hf_gpt2(out), doctest::Contains("is not gpt2"), ipa::io_error);
  ipa::save_hf_gpt2(out, w);
  std::filesystem::resize_file(out + "/model.safetensors", 4000);
  CHECK_THROWS_WITH_AS(ipa::load_hf_gpt2(out), doctest::Contains("safetensors"), ipa::io_error);
  std::filesystem::remove_all(tmp);
}

TEST_CASE("GPT-2 random init has nanoGPT's scales and the model runs on it") {
  ipa::gpt2_config c;
  c.dim = 32;
  c.hidden_dim = 128;
  c.n_layers = 2;
  c.n_heads = 4;
  c.vocab_size = 50;
  c.seq_len = 16;
  const auto w = ipa::gpt2_weights::random(c, 7);
  CHECK(w.tensor("ln_1.weight")[0] == 1.0f);
  CHECK(w.tensor("attn.c_attn.bias")[5] == 0.0f);
  const ipa::gpt2_model m(w);
  auto s = m.new_state(1);
  std::vector<float> logits(50);
  m.prefill(s, ipa::prompt_list{{1, 2, 3}}, logits);
  CHECK(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
  c.n_heads = 5;
  CHECK_THROWS_AS(ipa::gpt2_weights{c}, ipa::config_error);
}

TEST_CASE("GPT-2 GGUF (llama.cpp's gpt2 names): F32 round trip exact, F16 close, bad dims named") {
  if (!ipa_test::have(gpt2_dir() + "/model.safetensors")) return;
  const ipa::gpt2_weights w = ipa::load_hf_gpt2(gpt2_dir());
  const auto tmp = std::filesystem::temp_directory_path() / "ipa_gpt2_gguf_test";
  std::filesystem::create_directories(tmp);
  const std::string f32 = (tmp / "tiny.gguf").string(), f16 = (tmp / "tiny-f16.gguf").string();
  ipa::save_gguf_gpt2(f32, w);
  ipa::save_gguf_gpt2(f16, w, nullptr, true);
  const auto file = ipa::gguf_file::load(f32);
  CHECK(ipa::gguf_architecture(file) == "gpt2");
  const ipa::gpt2_weights back = ipa::load_gguf_gpt2(file);
  CHECK(std::equal(back.data().begin(), back.data().end(), w.data().begin(), w.data().end()));
  const ipa::gpt2_model exact(w), half(ipa::load_gguf_gpt2(ipa::gguf_file::load(f16)));
  auto s1 = exact.new_state(1);
  auto s2 = half.new_state(1);
  std::vector<float> l1(512), l2(512);
  const auto tokens = golden_tokens();
  exact.prefill(s1, ipa::prompt_list{{tokens.begin(), tokens.begin() + 20}}, l1);
  half.prefill(s2, ipa::prompt_list{{tokens.begin(), tokens.begin() + 20}}, l2);
  CHECK(max_abs_diff(l1, l2) < 1e-3);
  CHECK(max_abs_diff(l1, l2) > 0.0);
  ipa::gpt2_model f16_cache(w);  // keys and values kept as halves: close, not equal
  f16_cache.set_kv_cache_type(ipa::kv_cache_type::f16);
  auto s3 = f16_cache.new_state(1);
  CHECK(s3.key_cache.bytes() * 2 == s1.key_cache.bytes());
  std::vector<float> l3(512);
  f16_cache.prefill(s3, ipa::prompt_list{{tokens.begin(), tokens.begin() + 20}}, l3);
  CHECK(max_abs_diff(l1, l3) < 1e-2);
  CHECK(max_abs_diff(l1, l3) > 0.0);
  CHECK_THROWS_WITH_AS(ipa::load_gguf_llama(file), doctest::Contains("'gpt2' is not supported"), ipa::io_error);

  // dims of one projection swapped: the header names the tensor and both shapes
  std::string bytes = ipa::read_file(f32);
  const std::string key = "blk.0.ffn_up.weight";
  const auto at = bytes.find(key) + key.size() + 4;  // then: n_dims (u32), ne0, ne1 (u64)
  std::uint64_t ne0 = 64, ne1 = 256;
  std::memcpy(bytes.data() + at, &ne1, 8);
  std::memcpy(bytes.data() + at + 8, &ne0, 8);
  CHECK_THROWS_WITH_AS(ipa::load_gguf_gpt2(ipa::gguf_file(bytes, "swapped.gguf")),
                       doctest::Contains("'blk.0.ffn_up.weight' has ggml dims [256, 64], expected [64, 256]"),
                       ipa::io_error);
  std::filesystem::remove_all(tmp);
}

TEST_CASE("GPT-2 tokenizer stored in a GGUF encodes like the original vocabulary files") {
  const std::string bpe = ipa_test::golden_dir() + "/gpt2_bpe";
  if (!ipa_test::have(bpe + "/encoder.json")) return;
  const auto tok = ipa::gpt2_tokenizer::load(bpe);
  ipa::gpt2_config c;  // a GPT-2-vocabulary model small enough for a test
  c.dim = 8;
  c.hidden_dim = 16;
  c.n_layers = 1;
  c.n_heads = 2;
  c.vocab_size = int(tok.vocab_size());
  c.seq_len = 32;
  const auto w = ipa::gpt2_weights::random(c, 3);
  const std::string path = (std::filesystem::temp_directory_path() / "ipa_gpt2_tok.gguf").string();
  ipa::save_gguf_gpt2(path, w, &tok);
  const auto file = ipa::gguf_file::load(path);
  const auto from_gguf = ipa::load_gguf_gpt2_tokenizer(file);
  CHECK(from_gguf.vocab_size() == tok.vocab_size());
  CHECK(from_gguf.eot_id() == 50256);
  CHECK(from_gguf.merge_list() == tok.merge_list());
  std::ifstream in(bpe + "/gpt2_encode.jsonl");
  std::size_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j["text"].get<std::string>();
    CHECK(from_gguf.encode(text) == tok.encode(text));
  }
  CHECK(lines > 10);
  CHECK_THROWS_WITH_AS(ipa::load_gguf_tokenizer(file), doctest::Contains("not the SentencePiece"), ipa::io_error);
  std::filesystem::remove(path);
}
