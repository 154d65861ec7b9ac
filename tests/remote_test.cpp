// SPDX-License-Identifier: MIT
// The remote base against the real llama.cpp llama-server serving stories260K.gguf: its top-k
// equals ipa's own top_k_view of the same GGUF, decoding and training through it match the local
// base, the update never calls the server, a server that restarts mid-rollout is survived, and
// every malformed reply or dead server ends in a clear ipa::remote_error, never a hang.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ipa/decode/decoder.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/model/llama.hpp>
#include <ipa/remote/remote_base.hpp>
#include <ipa/reward/reward.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>
#include <ipa/text/vocabulary.hpp>
#include <ipa/train/trainer.hpp>

#include "support/llama_server.hpp"
#include "support/made_up_model.hpp"
#include "test_data.hpp"

namespace {

std::string server_binary() { return ipa_test::peers_dir(IPA_TEST_PEERS_DIR) + "/llama.cpp/bin/llama-server"; }
std::string gguf_path() { return ipa_test::model_dir() + "/stories260K.gguf"; }

// The server and the GGUF it serves, or a visible skip (a failure under CI=true).
bool have_server() { return ipa_test::have(server_binary()) && ipa_test::have(gguf_path()); }

// 8 slots of 128 tokens: stories260K's trained context, one slot per row of a batch of 8.
std::unique_ptr<ipa_test::llama_server> start_server(int slots = 8) {
  return std::make_unique<ipa_test::llama_server>(server_binary(), gguf_path(), slots, 128 * slots);
}

struct local_fixture {
  ipa::llama_model base{ipa::load_gguf_llama(ipa::gguf_file::load(gguf_path()))};
  ipa::llama2c_tokenizer tok = ipa::load_gguf_tokenizer(ipa::gguf_file::load(gguf_path()));
  ipa::prompt_list prompts(std::size_t n) const {
    const char* texts[] = {"Once upon a time",
                           "Tom had a ball.",
                           "One day, Lily went to the park with her mom and saw a big dog",
                           "The sun",
                           "Sam and Mia liked to play",
                           "There was a little bird who could not fly. It was sad.",
                           "Ben",
                           "A cat sat on the mat and looked at the"};
    ipa::prompt_list out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(tok.encode(texts[i % 8]));
    return out;
  }
};

ipa::remote_options options_for(const std::string& url, std::size_t k = 20) {
  ipa::remote_options o;
  o.urls = {url};
  o.top_k = k;
  o.request_timeout_ms = 5000;
  o.give_up_after_s = 20;
  return o;
}

// Top-k rows agree: the same log-probs within tol at every rank, the same id unless two ranks
// tie within tol (then either order is right).
void check_same_top_k(std::span<const ipa::token_id> ids_a, std::span<const float> lps_a,
                      std::span<const ipa::token_id> ids_b, std::span<const float> lps_b, double tol) {
  for (std::size_t j = 0; j < ids_a.size(); ++j) {
    CAPTURE(j);
    REQUIRE(std::abs(lps_a[j] - lps_b[j]) <= tol);
    if (ids_a[j] != ids_b[j]) {  // tied within tol: found near its log-prob, or just past b's last rank
      const auto it = std::find(ids_b.begin(), ids_b.end(), ids_a[j]);
      const bool tied = it != ids_b.end() ? std::abs(lps_b[std::size_t(it - ids_b.begin())] - lps_a[j]) <= 2 * tol
                                          : lps_a[j] <= lps_b[lps_b.size() - 1] + 2 * tol;
      CHECK(tied);
    }
  }
}

}  // namespace

TEST_CASE("remote base: every position of a 100-token rollout equals the local GGUF's top_k_view within 1e-4") {
  if (!have_server()) return;
  const auto server = start_server();
  const local_fixture f;
  const auto table = ipa::table_of(f.tok);
  const ipa::top_k_view local(f.base, 20);

  // one request a step holding every row (the server matches rows to its caches) or one request
  // per row pinned to a slot, each with the raw top-k and renormalised (the local rows then too)
  struct request_form {
    bool batched, renormalized;
  };
  for (const auto [batched, renormalized] : {request_form{true, false}, {false, false}, {true, true}, {false, true}})
    for (std::size_t B : {std::size_t(1), std::size_t(8)}) {
      CAPTURE(batched);
      CAPTURE(renormalized);
      CAPTURE(B);
      ipa::remote_options o = options_for(server->url());
      o.batch_rows = batched;
      o.renormalize_top_k = renormalized;
      const ipa::remote_base remote(o, f.base.vocab_size(), &table);
      REQUIRE(remote.servers().size() == 1);
      CHECK(remote.servers()[0].vocab == 512);
      CHECK(remote.servers()[0].slots == 8);
      CHECK(remote.context_length() == 127);  // a slot of 128, room for the sampled token
      // the rows' continuations: greedy from the local model, 100 tokens each (capped by context)
      const ipa::prompt_list prompts = f.prompts(B);
      ipa::generation_config g;
      g.max_new_tokens = 100;
      ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
      ipa::xoshiro256 rng(1);
      const ipa::rollout r = ipa::ipa_decoder<ipa::llama_model>(f.base).generate(prompts, g, pick, rng);

      auto rs = remote.new_state(int(B), 128);
      auto ls = local.new_state(int(B), 128);
      const std::size_t k = 20;
      std::vector<ipa::token_id> rid(B * k), lid(B * k);
      std::vector<float> rlp(B * k), llp(B * k);
      std::size_t positions = 0;
      auto compare = [&](std::size_t n) {
        for (std::size_t j = 0; j < n; ++j, ++positions) {
          if (renormalized) {  // the server's top k sum to 1; so must the local ones
            double mass = 0;
            for (std::size_t i = 0; i < k; ++i) mass += std::exp(double(rlp[j * k + i]));
            REQUIRE(std::abs(mass - 1.0) < 1e-5);
            ipa::log_softmax({llp.data() + j * k, k});
          }
          check_same_top_k({rid.data() + j * k, k}, {rlp.data() + j * k, k}, {lid.data() + j * k, k},
                           {llp.data() + j * k, k}, 1e-4);
        }
      };
      remote.prefill_top_k(rs, prompts, rid, rlp);
      local.prefill_top_k(ls, prompts, lid, llp);
      compare(B);
      for (std::size_t t = 0;; ++t) {  // feed response token t to every row that has a next one
        std::vector<int> rows;
        std::vector<ipa::token_id> next;
        for (std::size_t b = 0; b < B; ++b)
          if (t + 1 < r.response_length(b)) rows.push_back(int(b)), next.push_back(r.response_ids(b, t));
        if (rows.empty()) break;
        const std::size_t sent = remote.requests_sent();
        remote.step_top_k(rs, rows, next, rid, rlp);
        // (renormalised, the server samples among the top k: a partial UTF-8 pick is asked again)
        if (renormalized) CHECK(remote.requests_sent() - sent >= 1);
        else CHECK(remote.requests_sent() - sent == (batched ? 1 : rows.size()));
        local.step_top_k(ls, rows, next, lid, llp);
        compare(rows.size());
      }
      std::size_t expected = 0;
      for (std::size_t b = 0; b < B; ++b) expected += r.response_length(b);
      CHECK(positions == expected);
      CHECK(r.response_length(0) == 100);
    }
}

namespace {

// How far ipa's in-place model of a GGUF is from llama-server's on the same file: top-20 ids and
// log-probs at every position of `sequence`, fed one token at a time (early: the first 32).
struct oracle_gaps {
  double worst = 0, worst_early = 0, mean = 0;
};
oracle_gaps compare_with_server(const std::string& path, const std::vector<ipa::token_id>& sequence,
                                const ipa::llama2c_tokenizer& tok, double early_tol, double tol,
                                ipa::kv_cache_type kv = ipa::kv_cache_type::f32) {
  const bool f16 = kv == ipa::kv_cache_type::f16;
  const ipa_test::llama_server server(server_binary(), path, 1, 128, 0, 1, f16 ? "f16" : "f32");
  ipa::llama_model in_place(ipa::load_gguf_llama_compact(ipa::gguf_file::load(path)));
  in_place.set_kv_cache_type(kv);
  REQUIRE(in_place.is_compact());
  const auto table = ipa::table_of(tok);
  const ipa::remote_base remote(options_for(server.url()), in_place.vocab_size(), &table);
  const ipa::top_k_view local(in_place, 20);
  auto rs = remote.new_state(1, 128);
  auto ls = local.new_state(1, 128);
  std::vector<ipa::token_id> rid(20), lid(20);
  std::vector<float> rlp(20), llp(20);
  const ipa::prompt_list first = {{sequence[0]}};
  remote.prefill_top_k(rs, first, rid, rlp);
  local.prefill_top_k(ls, first, lid, llp);
  oracle_gaps gaps;
  for (std::size_t t = 1;; ++t) {
    CAPTURE(t);
    for (std::size_t j = 0; j < 20; ++j) {
      const double gap = std::abs(rlp[j] - llp[j]);
      gaps.worst = std::max(gaps.worst, gap);
      gaps.mean += gap / double(20 * sequence.size());
      if (t <= 32) gaps.worst_early = std::max(gaps.worst_early, gap);
    }
    // (the last rank's id is not compared: its neighbour outside the top 20 may tie with it)
    check_same_top_k({rid.data(), 19}, rlp, lid, llp, t <= 32 ? early_tol : tol);
    CHECK(std::abs(rlp[19] - llp[19]) <= (t <= 32 ? early_tol : tol));
    if (t == sequence.size()) break;
    const std::vector<int> row = {0};
    const std::vector<ipa::token_id> next = {sequence[t]};
    remote.step_top_k(rs, row, next, rid, rlp);
    local.step_top_k(ls, row, next, lid, llp);
  }
  return gaps;
}

// 64 tokens: a prompt and stories260K's greedy continuation.
std::vector<ipa::token_id> story_sequence(const ipa::llama_weights& weights, const ipa::llama2c_tokenizer& tok) {
  const ipa::llama_model f32(weights);
  ipa::generation_config g;
  g.max_new_tokens = 64;
  ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
  ipa::xoshiro256 rng(1);
  const ipa::prompt_list prompt = {tok.encode("Once upon a time, Lily")};
  const ipa::rollout r = ipa::ipa_decoder<ipa::llama_model>(f32).generate(prompt, g, pick, rng);
  std::vector<ipa::token_id> ids = prompt[0];
  for (std::size_t t = 0; t < r.response_length(0) && ids.size() < 64; ++t) ids.push_back(r.response_ids(0, t));
  return ids;
}

}  // namespace

// llama.cpp is the oracle for compact weights: stories260K written by ipa as F16 and as Q8_0
// (ffn_down, rows of 172, falls back to F16 as llama-quantize does), served by llama-server and
// read in place by ipa (llama_compact_weights). Both round the inputs of each product as ggml
// does (F16; Q8_0 per block of 32, the scaled input rounded to float first). ipa computes the
// products, RMSNorm, RoPE, attention and SwiGLU in llama.cpp's order, operation for operation
// (compact_matrix.hpp, attention.hpp), so both agree to the printed digits: 1.9e-6 (F16) and
// 2.4e-6 (Q8_0) over 64 positions (0.008 and 0.14 before that: an int8 input a few ulp from a
// tie rounded the other way, and the flip travelled on through the KV cache). An unoptimised
// build (the sanitizer pass, -O0) rounds multiply-adds in two steps where llama.cpp fuses them,
// and inputs flip again: there, the flip tolerance. A wrong kernel is off by whole units.
// With llama-server's default f16 KV cache on both sides: 1.9e-6 (F16) and 2.9e-6 (Q8_0); ipa's
// f32 cache against the server's f16 one fails this tolerance.
TEST_CASE("compact GGUF (F16, Q8_0): ipa's in-place model equals llama-server's top-20 at every position") {
  if (!have_server() || !ipa_test::have(ipa_test::model_path())) return;
  const auto weights = ipa::load_llama2c(ipa_test::model_path());
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  const auto dir = std::filesystem::temp_directory_path() / ("ipa_compact_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::vector<ipa::token_id> sequence = story_sequence(weights, tok);
  REQUIRE(sequence.size() == 64);
#ifdef __OPTIMIZE__
  constexpr double f16_tol = 1e-4, q8_0_tol = 1e-4;
#else
  constexpr double f16_tol = 2e-2, q8_0_tol = 0.4;
#endif
  const struct {
    ipa::weight_type type;
    ipa::kv_cache_type kv;
    double tol;
  } cases[] = {{ipa::weight_type::f16, ipa::kv_cache_type::f32, f16_tol},
               {ipa::weight_type::q8_0, ipa::kv_cache_type::f32, q8_0_tol},
               {ipa::weight_type::f16, ipa::kv_cache_type::f16, f16_tol},
               {ipa::weight_type::q8_0, ipa::kv_cache_type::f16, q8_0_tol}};
  for (const auto& [type, kv, tol] : cases) {
    const std::string name = std::string(ipa::weight_type_name(type)) +
                             (kv == ipa::kv_cache_type::f16 ? ", f16 KV cache" : ", f32 KV cache");
    CAPTURE(name);
    const std::string path = (dir / (std::string(ipa::weight_type_name(type)) + ".gguf")).string();
    if (!std::filesystem::exists(path)) ipa::save_gguf_llama(path, weights, &tok, type);
    const oracle_gaps gaps = compare_with_server(path, sequence, tok, tol, tol, kv);
    MESSAGE(name << ": log-prob differences from llama-server over 64 positions x top-20: "
                 << "largest " << gaps.worst << " (" << gaps.worst_early << " in the first 32), mean " << gaps.mean);
  }
  std::filesystem::remove_all(dir);
}

// The K-quants need rows of a multiple of 256, which stories260K lacks: a model of that shape
// with random weights (dim 256, hidden 768, 2 layers, 4 heads, 2 KV heads, stories260K's 512
// tokens) written by ipa as F32, F16 and Q8_0, and turned into the other types by
// llama-quantize (Q4_K_M: Q4_K with Q6_K for attn_v, ffn_down and output, as llama.cpp mixes
// them). Its classifier is scaled up (logits of a few units), which also magnifies any int8
// rounding flip. Measured here (largest / mean gap over 64 positions x top 20): every type
// within 1.9e-6 / 5e-7: the products, norms, RoPE and attention compute what llama.cpp's AVX2
// build computes, in its order. The last differences to go: (1) a Q4_0, Q3_K or Q6_K token
// embedding (rows of multiples of one step) puts dozens of the first layer's inputs exactly on
// x.5 once scaled; llama.cpp rounds the scaled input to float first, and until ipa did too
// (nearest_int_of_product: a compiler with FMA had fused the two roundings) those files were
// 0.03-0.1 off from the first position; (2) Q8_0 and Q4_0 blocks' sums now go into the float
// lanes and chains ggml's kernels use (q8_0_tile; they flipped an input from position 8 on, up
// to 0.074); (3) BF16 products end their lanes in hsum_float_8's order, as ggml_vec_dot_bf16
// does (0.015 before).
// With IPA_ORACLE_110M=1 (ctest's ipa_oracle_110m) the same runs on the 110M shape of issue 21
// (random weights as they come, the made-up 32000-piece vocabulary, the classifier tied to the
// embedding; 90 s). Measured there (largest / mean gap): F32 8.6e-6 / 2.8e-6, F16 9.5e-6 /
// 2.4e-6, Q8_0 6.7e-6 / 2.0e-6, Q4_0 9.5e-6 / 2.5e-6, Q4_K_M 7.6e-6 / 2.6e-6, Q5_K_M 8.6e-6 /
// 2.0e-6, Q3_K_M 8.6e-6 / 2.8e-6, Q6_K 8.6e-6 / 2.3e-6 (before (1) and (2): Q8_0 0.025, Q4_0
// 0.025, Q4_K_M 0.035, flips from positions 1-5); BF16 8.6e-6 / 2.4e-6 (0.006 before). With
// llama-server's default f16 KV cache on both sides: Q8_0 1.0e-5 / 2.3e-6, Q4_K_M 7.6e-6 / 2.2e-6
// (1.2e-6 and 1.1e-6 on the small shape).
// (AVX-512 VNNI builds interleave Q8_0 and Q4_0 and add Q8_0's blocks in one chain: a few ulp
// from llama.cpp's AVX2 order; this test builds for AVX2.)
TEST_CASE(
    "compact GGUF (F32, F16, BF16, Q8_0, Q4_0, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K): ipa's in-place model equals "
    "llama-server's top-20") {
  const std::string quantize = ipa_test::peers_dir(IPA_TEST_PEERS_DIR) + "/llama.cpp/bin/llama-quantize";
  if (!have_server() || !ipa_test::have(quantize) || !ipa_test::have(ipa_test::model_path())) return;
  const bool shape_110m = std::getenv("IPA_ORACLE_110M") != nullptr;
  const auto tok =
      shape_110m ? ipa_bench::made_up_tokenizer() : ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  const std::vector<ipa::token_id> sequence = story_sequence(ipa::load_llama2c(ipa_test::model_path()),
                                                             ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path()));
  ipa::llama_config c = ipa_bench::shape_110m();
  if (!shape_110m) c.dim = 256, c.hidden_dim = 768, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 512;
  c.seq_len = 128, c.shared_classifier = shape_110m;
  ipa::llama_weights weights = ipa::llama_weights::random(c, 5);
  if (!shape_110m)  // logits of a few units: a peaked distribution
    for (float& v : weights.tensor("output")) v *= 8.0f;
  const auto dir = std::filesystem::temp_directory_path() / ("ipa_kquant_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string f32_path = (dir / "F32.gguf").string();
  ipa::save_gguf_llama(f32_path, weights, &tok, ipa::weight_type::f32);
  // The quantized types agree to the last bits of llama.cpp's float chains, which fuse
  // multiply-adds as an optimised build of ipa does; an unoptimised one (the sanitizer pass
  // builds -O0) rounds them apart and flips an int8 input now and then (Q5_K_M at position 32):
  // there, a flip tolerance.
#ifdef __OPTIMIZE__
  constexpr double quant_tol = 1e-4, f16_tol = 1e-4, bf16_tol = 1e-4;
#else
  constexpr double quant_tol = 0.4, f16_tol = 2e-2, bf16_tol = 5e-2;
#endif
  constexpr auto kv_f32 = ipa::kv_cache_type::f32, kv_f16 = ipa::kv_cache_type::f16;
  const struct {
    const char* name;
    ipa::weight_type written;                         // by ipa; or f32, then llama-quantize to `name`
    double tol;                                       // (both shapes; on the 110M shape issue 21 asks 1e-3 and 2e-2)
    ipa::kv_cache_type kv = ipa::kv_cache_type::f32;  // f16: llama-server's default cache, on both sides
  } cases[] = {{"F32", ipa::weight_type::f32, 1e-4},
               {"F16", ipa::weight_type::f16, f16_tol},
               {"BF16", ipa::weight_type::f32, bf16_tol},
               {"Q8_0", ipa::weight_type::q8_0, quant_tol},
               {"Q4_0", ipa::weight_type::f32, quant_tol},
               {"Q4_K_M", ipa::weight_type::f32, quant_tol},
               {"Q5_K_M", ipa::weight_type::f32, quant_tol},
               {"Q3_K_M", ipa::weight_type::f32, quant_tol},
               {"Q6_K", ipa::weight_type::f32, quant_tol},
               {"Q8_0", ipa::weight_type::q8_0, quant_tol, kv_f16},
               {"Q4_K_M", ipa::weight_type::f32, quant_tol, kv_f16}};
  for (const auto& [name, written, tol, kv] : cases) {
    const std::string label = std::string(name) + (kv == kv_f16 ? ", f16 KV cache" : "");
    CAPTURE(label);
    const std::string path = (dir / (std::string(name) + ".gguf")).string();
    if (std::string(name) == "F32" || (kv != kv_f32 && std::filesystem::exists(path))) {
    } else if (written != ipa::weight_type::f32) {
      ipa::save_gguf_llama(path, weights, &tok, written);
    } else {
      const std::string command = quantize + " " + f32_path + " " + path + " " + name + " > " + path + ".log 2>&1";
      REQUIRE(std::system(command.c_str()) == 0);
    }
    const oracle_gaps gaps =
        compare_with_server(std::string(name) == "F32" ? f32_path : path, sequence, tok, tol, tol, kv);
    MESSAGE(label << ": log-prob differences from llama-server over 64 positions x top-20: largest " << gaps.worst
                  << ", mean " << gaps.mean);
  }
  std::filesystem::remove_all(dir);
}

// ipa's reading of llama-quantize's files against llama.cpp's own: llama-quantize turns each file
// back into F32 (--allow-requantize, ggml's to_float of every tensor), and ipa's widening load of
// the quantized file must equal that, bit for bit, tensor by tensor (the token embedding
// included).
TEST_CASE("every tensor of llama-quantize's Q4_0, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K files dequantizes as llama.cpp's") {
  const std::string quantize = ipa_test::peers_dir(IPA_TEST_PEERS_DIR) + "/llama.cpp/bin/llama-quantize";
  if (!ipa_test::have(quantize) || !ipa_test::have(ipa_test::model_path())) return;
  ipa::llama_config c;  // rows of a multiple of 256 for the K-quants
  c.dim = 256, c.hidden_dim = 768, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 512;
  c.seq_len = 64, c.shared_classifier = false;
  const auto dir = std::filesystem::temp_directory_path() / ("ipa_dequant_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string f32_path = (dir / "F32.gguf").string();
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  ipa::save_gguf_llama(f32_path, ipa::llama_weights::random(c, 9), &tok, ipa::weight_type::f32);
  for (const char* type : {"Q4_0", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"}) {
    CAPTURE(std::string(type));
    const std::string quantized = (dir / (std::string(type) + ".gguf")).string(),
                      back = (dir / (std::string(type) + ".F32.gguf")).string();
    REQUIRE(std::system((quantize + " " + f32_path + " " + quantized + " " + type + " > /dev/null 2>&1").c_str()) == 0);
    REQUIRE(std::system(
                (quantize + " --allow-requantize " + quantized + " " + back + " F32 > /dev/null 2>&1").c_str()) == 0);
    const ipa::gguf_file file = ipa::gguf_file::load(quantized);
    std::set<std::uint32_t> types;
    for (const auto& [name, t] : file.tensors()) types.insert(t.type);
    MESSAGE(std::string(type) << " holds ggml types " << [&] {
      std::string list;
      for (std::uint32_t t : types) list += std::string(ipa::ggml_type_name(t)) + " ";
      return list;
    }());
    const ipa::llama_weights ours = ipa::load_gguf_llama(file),
                             theirs = ipa::load_gguf_llama(ipa::gguf_file::load(back));
    for (const auto& slot : ours.slots()) {
      CAPTURE(slot.name);
      const auto a = ours.tensor(slot.name), b = theirs.tensor(slot.name);
      CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("remote base: a sampled rollout with an adapter gives the local top_k_view's tokens and log-probs") {
  if (!have_server()) return;
  const auto server = start_server();
  const local_fixture f;
  const ipa::remote_base remote(options_for(server->url()), f.base.vocab_size());
  const ipa::top_k_view local(f.base, 20);
  // an adapter that moves the distribution: the base itself, weighted 0.5
  const ipa::llama_model adapter(ipa::load_gguf_llama(ipa::gguf_file::load(gguf_path())));
  ipa::generation_config g;
  g.max_new_tokens = 60;
  g.stop_tokens = {1};
  g.eos_id = 2;
  g.keep_base_logits = ipa::keep_base::top_k;
  const ipa::prompt_list prompts = f.prompts(8);
  auto sampler = ipa::make_standard_sampler(1.0f, 0, 0.95);
  ipa::xoshiro256 rng_remote(11), rng_local(11);
  const std::size_t sent_before = remote.requests_sent(), rows_before = remote.rows_sent();
  const ipa::rollout a = ipa::ipa_decoder<ipa::remote_base, ipa::llama_model>(remote, {ipa::with_alpha(adapter, 0.5f)})
                             .generate(prompts, g, sampler, rng_remote);
  const ipa::rollout b =
      ipa::ipa_decoder<ipa::top_k_view<ipa::llama_model>, ipa::llama_model>(local, {ipa::with_alpha(adapter, 0.5f)})
          .generate(prompts, g, sampler, rng_local);
  CHECK(a.response_ids == b.response_ids);
  std::size_t tokens = 0, longest = 0;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    REQUIRE(a.response_length(r) == b.response_length(r));
    tokens += a.response_length(r);
    longest = std::max(longest, a.response_length(r));
    for (std::size_t t = 0; t < a.response_length(r); ++t) {
      CHECK(std::abs(a.log_probs(r, t) - b.log_probs(r, t)) <= 1e-4);
      CHECK(std::abs(a.tailored_log_probs(r, t) - b.tailored_log_probs(r, t)) <= 1e-4);
    }
  }
  // one query per row and generated token, minus the last of each row; finished rows stop asking;
  // one request a step holding them all
  CHECK(remote.rows_sent() - rows_before == tokens);
  CHECK(remote.requests_sent() - sent_before == longest);

  // the top-k renormalised over itself: the same tailored policy (restrict_to_top_k), so the same
  // tokens and log-probs, while the kept base rows sum to 1
  ipa::remote_options o = options_for(server->url());
  o.renormalize_top_k = true;
  const ipa::remote_base renormalized(o, f.base.vocab_size());
  ipa::xoshiro256 rng_renormalized(11);
  const ipa::rollout c =
      ipa::ipa_decoder<ipa::remote_base, ipa::llama_model>(renormalized, {ipa::with_alpha(adapter, 0.5f)})
          .generate(prompts, g, sampler, rng_renormalized);
  CHECK(c.response_ids == b.response_ids);
  // (the uniform tail spreads the mass the top k leave, which a renormalised top k does not say)
  ipa::generation_config uniform = g;
  uniform.sparse_tail = ipa::tail_policy::uniform;
  const ipa::ipa_decoder<ipa::remote_base, ipa::llama_model> base_alone(renormalized, {});
  CHECK_THROWS_WITH_AS(base_alone.generate(prompts, uniform, sampler, rng_renormalized),
                       doctest::Contains("the uniform tail needs the base's raw top-k log-probs"), ipa::config_error);
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    REQUIRE(c.response_length(r) == b.response_length(r));
    for (std::size_t t = 0; t < c.response_length(r); ++t) {
      CHECK(std::abs(c.log_probs(r, t) - b.log_probs(r, t)) <= 1e-4);
      CHECK(std::abs(c.tailored_log_probs(r, t) - b.tailored_log_probs(r, t)) <= 1e-4);
      double mass = 0;
      for (std::size_t j = 0; j < 20; ++j) mass += std::exp(double(c.base_top_k_log_probs(r, t, j)));
      CHECK(std::abs(mass - 1.0) < 1e-5);
    }
  }
}

TEST_CASE("remote base: training queries the server only in rollouts and matches the local top_k_view") {
  if (!have_server()) return;
  const auto server = start_server();
  const local_fixture f;
  const ipa::remote_base remote(options_for(server->url()), f.base.vocab_size());
  const ipa::top_k_view local(f.base, 20);
  ipa::llama_config c = f.base.weights().config();
  c.dim = 32, c.hidden_dim = 64, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 2;
  const ipa::llama_weights adapter = ipa::llama_weights::zero_output_adapter(c, 7);
  for (auto algo : {ipa::rl_algorithm::rloo, ipa::rl_algorithm::ppo, ipa::rl_algorithm::quark}) {
    CAPTURE(ipa::to_string(algo));
    ipa::rl_config cfg;
    cfg.algorithm = algo;
    cfg.prompts_per_step = 2;
    cfg.samples_per_prompt = algo == ipa::rl_algorithm::rloo ? 2 : 1;
    cfg.max_new_tokens = 16;
    cfg.stop_tokens = {1};
    cfg.eos_id = 2;
    cfg.lr.peak = 3e-3;
    cfg.seed = 3;
    ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::remote_base> through_server(
        &remote, adapter, f.tok, ipa::avoid_words({"sad", "dog"}), f.prompts(4), cfg);
    ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::top_k_view<ipa::llama_model>> on_local(
        &local, adapter, f.tok, ipa::avoid_words({"sad", "dog"}), f.prompts(4), cfg);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      const auto samples = through_server.rollout_and_score();
      for (const auto& s : samples) {
        CHECK(s.base_logits.empty());  // O(K) per position, never V
        CHECK(s.base_top_k_ids.size() == s.response.size() * 20);
      }
      const std::size_t sent = remote.requests_sent();
      ipa::step_metrics m_remote, m_local;
      through_server.update(samples, m_remote);
      CHECK(remote.requests_sent() == sent);  // the update never contacts the server
      const auto local_samples = on_local.rollout_and_score();
      on_local.update(local_samples, m_local);
      CHECK(m_remote.reward_mean == m_local.reward_mean);
      CHECK(m_remote.response_tokens == m_local.response_tokens);
      // the server's log-probs differ from ipa's by <= 1e-4 (different kernels), and the two
      // adapters drift apart by that much with each update
      CHECK(std::abs(m_remote.kl - m_local.kl) <= 5e-5 + 0.05 * m_local.kl);
      CHECK(std::abs(m_remote.loss - m_local.loss) <= 2e-3 + 0.01 * std::abs(m_local.loss));
    }
  }
}

namespace {

// Kills the server at one decoding step and starts it again `down` later, from another thread.
struct crash_at_step {
  ipa_test::llama_server* server;
  std::size_t at;
  std::chrono::milliseconds down;
  bool restart = true;
  std::shared_ptr<std::thread> restarter;
  void apply(std::span<float>, const ipa::sequence_view& seq) {
    if (seq.generated.size() != at || restarter) return;
    server->stop(SIGKILL);
    if (restart)
      restarter = std::make_shared<std::thread>([s = server, d = down] {
        std::this_thread::sleep_for(d);
        s->start();
      });
  }
};

}  // namespace

TEST_CASE("remote base: a server killed mid-rollout and restarted a second later; the text equals an unbroken run's") {
  if (!have_server()) return;
  const auto server = start_server(4);
  const local_fixture f;
  ipa::remote_options o = options_for(server->url());
  const ipa::remote_base remote(o, f.base.vocab_size());
  ipa::generation_config g;
  g.max_new_tokens = 40;
  const ipa::prompt_list prompts = f.prompts(4);
  auto sampler = ipa::make_standard_sampler(0.8f);
  const ipa::ipa_decoder<ipa::remote_base, ipa::llama_model> decoder(remote);
  ipa::xoshiro256 rng1(5), rng2(5);
  const ipa::rollout unbroken = decoder.generate(prompts, g, sampler, rng1);
  crash_at_step crash{server.get(), 10, std::chrono::milliseconds(1000), true, nullptr};
  const auto start = std::chrono::steady_clock::now();
  const ipa::rollout broken = decoder.generate(prompts, g, sampler, rng2, {}, crash);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(crash.restarter);
  crash.restarter->join();
  CHECK(seconds >= 1.0);  // it did wait for the server
  CHECK(broken.response_ids == unbroken.response_ids);
}

TEST_CASE("remote base: a server that never comes back ends the call with a clear error within give_up_after_s") {
  if (!have_server()) return;
  const auto server = start_server(4);
  const local_fixture f;
  ipa::remote_options o = options_for(server->url());
  o.give_up_after_s = 1.5;
  const ipa::remote_base remote(o, f.base.vocab_size());
  ipa::generation_config g;
  g.max_new_tokens = 40;
  auto sampler = ipa::make_standard_sampler(1.0f);
  ipa::xoshiro256 rng(1);
  crash_at_step crash{server.get(), 5, std::chrono::milliseconds(0), false, nullptr};
  const auto start = std::chrono::steady_clock::now();
  const ipa::ipa_decoder<ipa::remote_base, ipa::llama_model> decoder(remote);
  CHECK_THROWS_WITH_AS(decoder.generate(f.prompts(2), g, sampler, rng, {}, crash),
                       doctest::Contains("no usable answer"), ipa::remote_error);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 5.0);
  // and connecting to nothing at all
  o.urls = {"http://127.0.0.1:" + std::to_string(ipa_test::free_port())};
  CHECK_THROWS_WITH_AS(ipa::remote_base(o, 512), doctest::Contains("cannot connect"), ipa::remote_error);
}

TEST_CASE("remote base: a vocabulary or token table that differs from the server's is a config_error naming both") {
  if (!have_server()) return;
  const auto server = start_server(2);
  const local_fixture f;
  CHECK_THROWS_WITH_AS(ipa::remote_base(options_for(server->url()), 513),
                       doctest::Contains("serves a vocabulary of 512 tokens, the adapter's tokenizer has 513"),
                       ipa::config_error);
  ipa::token_table table = ipa::table_of(f.tok);
  table[300] = "zzz";
  CHECK_THROWS_WITH_AS(ipa::remote_base(options_for(server->url()), 512, &table), doctest::Contains("differ at id 300"),
                       ipa::config_error);
  // ids outside the vocabulary never reach the server
  const ipa::remote_base remote(options_for(server->url()), 512);
  auto s = remote.new_state(1, 8);
  std::vector<ipa::token_id> ids(20);
  std::vector<float> lps(20);
  CHECK_THROWS_WITH_AS(remote.prefill_top_k(s, {{1, 600}}, ids, lps), doctest::Contains("token id 600"),
                       ipa::config_error);
}

TEST_CASE("remote base: rows spread over two servers give the single-server answers") {
  if (!have_server()) return;
  const auto a = start_server(2), b = start_server(2);
  const local_fixture f;
  ipa::remote_options o = options_for(a->url() + "," + b->url());
  o.urls = {a->url(), b->url()};
  const ipa::remote_base two(o, 512);
  REQUIRE(two.servers().size() == 2);
  CHECK(two.cached_rows() == 4);
  const ipa::top_k_view local(f.base, 20);
  ipa::generation_config g;
  g.max_new_tokens = 30;
  g.keep_base_logits = ipa::keep_base::top_k;
  auto sampler = ipa::make_standard_sampler(1.0f);
  ipa::xoshiro256 rng_remote(3), rng_local(3);
  const ipa::prompt_list prompts = f.prompts(4);
  const auto r = ipa::ipa_decoder<ipa::remote_base, ipa::llama_model>(two).generate(prompts, g, sampler, rng_remote);
  const auto l = ipa::ipa_decoder<ipa::top_k_view<ipa::llama_model>, ipa::llama_model>(local).generate(
      prompts, g, sampler, rng_local);
  CHECK(r.response_ids == l.response_ids);
  CHECK(xt::amax(xt::abs(r.base_top_k_log_probs - l.base_top_k_log_probs))() <= 1e-4);
}

TEST_CASE("remote base: the OpenAI /v1/completions protocol, against llama-server's own /v1") {
  if (!have_server()) return;
  const auto server = start_server(2);
  const local_fixture f;
  const ipa::remote_base v1(options_for(server->url() + "/v1"), 512);
  REQUIRE(v1.servers()[0].protocol == ipa::remote_protocol::openai);
  const ipa::top_k_view local(f.base, 20);
  auto rs = v1.new_state(2, 64);
  auto ls = local.new_state(2, 64);
  std::vector<ipa::token_id> rid(40), lid(40);
  std::vector<float> rlp(40), llp(40);
  const ipa::prompt_list prompts = f.prompts(2);
  v1.prefill_top_k(rs, prompts, rid, rlp);
  local.prefill_top_k(ls, prompts, lid, llp);
  for (int t = 0; t < 10; ++t) {
    for (std::size_t j = 0; j < 2; ++j)
      check_same_top_k({rid.data() + j * 20, 20}, {rlp.data() + j * 20, 20}, {lid.data() + j * 20, 20},
                       {llp.data() + j * 20, 20}, 1e-4);
    const std::vector<int> rows = {0, 1};
    const std::vector<ipa::token_id> next = {lid[0], lid[20]};
    v1.step_top_k(rs, rows, next, rid, rlp);
    local.step_top_k(ls, rows, next, lid, llp);
  }
}

namespace {

// A valid llama-server /completion reply with k entries (ids 10, 11, ...).
std::string good_reply(std::size_t k) {
  nlohmann::json top = nlohmann::json::array();
  for (std::size_t i = 0; i < k; ++i) top.push_back({{"id", 10 + i}, {"logprob", -0.5 - double(i)}});
  return nlohmann::json{{"completion_probabilities", {{{"id", 2}, {"logprob", -9.0}, {"top_logprobs", top}}}},
                        {"truncated", false}}
      .dump();
}

// A responder that introduces itself as a llama-server of 2 slots and 512 tokens and answers
// /completion with answer(body).
template <class Answer>
ipa_test::canned_responder fake_llama_server(Answer answer) {
  return ipa_test::canned_responder([answer](const std::string& path, const std::string& body) {
    if (path == "/v1/models")
      return ipa_test::canned_responder::reply{200, R"({"data":[{"id":"m","meta":{"n_vocab":512}}]})"};
    if (path == "/props")
      return ipa_test::canned_responder::reply{200, R"({"total_slots":2,"default_generation_settings":{"n_ctx":128}})"};
    return answer(body);
  });
}

// The top 4 (ids, log-probs) of two rows, {1, 403} and {1, 407}, prefilled through `remote`.
std::pair<std::vector<ipa::token_id>, std::vector<float>> prefill_two_rows(const ipa::remote_base& remote) {
  auto s = remote.new_state(2, 8);
  std::vector<ipa::token_id> ids(8);
  std::vector<float> lps(8);
  remote.prefill_top_k(s, {{1, 403}, {1, 407}}, ids, lps);
  return {ids, lps};
}

// Runs one prefill of two rows against a responder that answers /completion with `reply`, one
// request per row or (batched) one for both.
void prefill_against(const ipa_test::canned_responder::reply& reply, double give_up_after_s = 1.0,
                     long timeout_ms = 5000, bool batched = false) {
  const auto responder = fake_llama_server([&](const std::string&) { return reply; });
  ipa::remote_options o = options_for(responder.url(), 4);
  o.give_up_after_s = give_up_after_s;
  o.request_timeout_ms = timeout_ms;
  o.batch_rows = batched;
  const auto [ids, lps] = prefill_two_rows(ipa::remote_base(o, 512));
  CHECK(ids[0] == 10);
  CHECK(lps[3] == -3.5f);
}

}  // namespace

TEST_CASE("remote base: every malformed reply is a clear remote_error, transient ones are retried, none hangs") {
  using reply = ipa_test::canned_responder::reply;
  prefill_against(reply{200, good_reply(4)});  // the responder itself works
  prefill_against(reply{200, good_reply(6)});  // more than K: the K best are kept
  const struct {
    const char* name;
    reply r;
    const char* message;
  } cases[] = {
      {"empty body", {200, ""}, "not JSON: (an empty body)"},
      {"not JSON", {200, "<html>oops</html>"}, "not JSON: '<html>"},
      {"truncated JSON", {200, good_reply(4).substr(0, 60)}, "not JSON"},
      {"NaN", {200, R"({"completion_probabilities":[{"top_logprobs":[{"id":3,"logprob":NaN}]}]})"}, "not JSON"},
      {"a JSON list", {200, "[1,2]"}, "not a JSON object"},
      {"null log-prob",
       {200, R"({"completion_probabilities":[{"top_logprobs":[{"id":3,"logprob":null}]}]})"},
       "top_logprobs[0].logprob is null, expected a number"},
      {"positive log-prob",
       {200, R"({"completion_probabilities":[{"top_logprobs":[{"id":3,"logprob":0.7}]}]})"},
       "expected a log-probability <= 0"},
      {"id outside the vocabulary",
       {200, R"({"completion_probabilities":[{"top_logprobs":[{"id":900,"logprob":-1}]}]})"},
       "is 900, outside the vocabulary [0, 512)"},
      {"id missing",
       {200, R"({"completion_probabilities":[{"top_logprobs":[{"logprob":-1}]}]})"},
       "has no top_logprobs[0].id"},
      {"fewer than K",
       {200, R"({"completion_probabilities":[{"top_logprobs":[{"id":3,"logprob":-1},{"id":4,"logprob":-2}]}]})"},
       "holds 2 top log-probs, expected 4"},
      {"repeated id",
       {200,
        R"({"completion_probabilities":[{"top_logprobs":[{"id":3,"logprob":-1},{"id":3,"logprob":-2},{"id":5,"logprob":-3},{"id":6,"logprob":-4}]}]})"},
       "token id 3 appears twice"},
      {"truncated prompt", {200, R"({"truncated":true,"completion_probabilities":[]})"}, "truncated the prompt"},
      {"missing probabilities (retried, then given up)", {200, R"({"truncated":false})"}, "no usable answer"},
      {"HTTP 400", {400, R"({"error":{"message":"bad"}})"}, "answered HTTP 400"},
      {"HTTP 500 that persists", {500, R"({"error":{"message":"boom"}})"}, "HTTP 500"},
      {"HTTP 503 that persists", {503, ""}, "HTTP 503"},
      {"a reply slower than the timeout", {200, good_reply(4), 1500}, "Timeout"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(prefill_against(c.r, 1.0, 300), doctest::Contains(c.message), ipa::remote_error);
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 8.0);
  }
}

TEST_CASE("remote base: renormalised top-k; a reply without probabilities is asked again in the raw form") {
  // the renormalised form's reply: probabilities, not log-probs
  nlohmann::json top = nlohmann::json::array();
  for (std::size_t i = 0; i < 4; ++i) top.push_back({{"id", 10 + i}, {"prob", 0.4 - 0.1 * double(i)}});
  const std::string probs_reply =
      nlohmann::json{{"completion_probabilities", {{{"id", 11}, {"prob", 0.3}, {"top_probs", top}}}}}.dump();
  std::vector<ipa::token_id> ids(4);
  std::vector<float> lps(4);
  ipa::parse_top_k_reply(ipa::remote_protocol::llama_cpp, probs_reply, 4, 512, ids, lps);
  CHECK(ids == std::vector<ipa::token_id>{10, 11, 12, 13});
  CHECK(lps[1] == doctest::Approx(std::log(0.3)));
  for (const char* bad : {"1.5", "-0.1", "null"}) {
    CAPTURE(bad);
    const std::string r = std::string(R"({"completion_probabilities":[{"top_probs":[{"id":3,"prob":)") + bad + "}]}]}";
    CHECK_THROWS_WITH_AS(ipa::parse_top_k_reply(ipa::remote_protocol::llama_cpp, r, 1, 512, ids, lps),
                         doctest::Contains("top_probs[0].prob is"), ipa::remote_error);
  }
  // renormalising on arrival, log_softmax over the k: log p_i - log sum p (good_reply(4)'s values)
  std::vector<float> raw = {-0.5f, -1.5f, -2.5f, -3.5f};
  ipa::log_softmax(raw);
  double mass = 0;
  for (float lp : raw) mass += std::exp(double(lp));
  CHECK(mass == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(raw[0] - raw[1] == doctest::Approx(1.0).epsilon(1e-6));

  // against a responder: the first request is the renormalised form and gets no probabilities
  // (llama-server's partial UTF-8 pick); the retry is the raw form, renormalised on arrival
  std::vector<nlohmann::json> bodies;
  const auto responder = fake_llama_server([&](const std::string& body) {
    bodies.push_back(nlohmann::json::parse(body));
    if (bodies.back().value("post_sampling_probs", false))
      return ipa_test::canned_responder::reply{
          200, R"([{"index":0,"truncated":false},)" +
                   nlohmann::json::parse(probs_reply).dump().insert(1, R"("index":1,)") + "]"};
    return ipa_test::canned_responder::reply{200, good_reply(4)};
  });
  ipa::remote_options o = options_for(responder.url(), 4);
  o.renormalize_top_k = true;
  const auto [both_ids, both_lps] = prefill_two_rows(ipa::remote_base(o, 512));
  REQUIRE(bodies.size() == 2);
  CHECK(bodies[0]["samplers"] == nlohmann::json({"top_k"}));
  CHECK(bodies[0]["top_k"] == 4);
  CHECK(!bodies[1].contains("post_sampling_probs"));  // the retry: raw, row 0 alone
  CHECK(bodies[1]["prompt"] == nlohmann::json::parse("[[1, 403]]"));
  CHECK(both_ids[0] == 10);
  for (std::size_t i = 0; i < 4; ++i) CHECK(both_lps[i] == doctest::Approx(raw[i]).epsilon(1e-6));  // row 0: raw
  CHECK(both_ids[4] == 10);
  CHECK(both_lps[5] == doctest::Approx(std::log(0.3 / 1.0)).epsilon(1e-6));  // row 1: its top_probs sum to 1
}

TEST_CASE("remote base: a batched reply is split by index; one that does not add up is a clear remote_error") {
  using reply = ipa_test::canned_responder::reply;
  auto part = [](std::size_t index, const std::string& one) {
    nlohmann::json j = nlohmann::json::parse(one);
    j["index"] = index;
    return j;
  };
  auto list = [](std::initializer_list<nlohmann::json> parts) { return nlohmann::json(parts).dump(); };
  prefill_against(reply{200, list({part(1, good_reply(4)), part(0, good_reply(4))})}, 1.0, 5000, true);
  const struct {
    const char* name;
    reply r;
    const char* message;
  } cases[] = {
      {"one answer for two prompts", {200, good_reply(4)}, "holds 1 answers for 2 prompts"},
      {"three answers",
       {200, list({part(0, good_reply(4)), part(1, good_reply(4)), part(2, good_reply(4))})},
       "holds 3 answers for 2 prompts"},
      {"an index twice", {200, list({part(0, good_reply(4)), part(0, good_reply(4))})}, "expected each of 0..1 once"},
      {"an index outside", {200, list({part(0, good_reply(4)), part(5, good_reply(4))})}, "index is 5"},
      {"one part short", {200, list({part(0, good_reply(4)), part(1, good_reply(2))})}, "holds 2 top log-probs"},
      {"parts without probabilities (retried, then given up)",
       {200, list({nlohmann::json{{"index", 1}, {"truncated", false}}, nlohmann::json{{"index", 0}}})},
       "no usable answer for row 0"},
      {"a list of numbers", {200, "[1,2]"}, "not a JSON object"},
      {"a string", {200, "\"x\""}, "neither a JSON object nor a list"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    CHECK_THROWS_WITH_AS(prefill_against(c.r, 1.0, 300, true), doctest::Contains(c.message), ipa::remote_error);
  }
  // vLLM's form: one object whose choices carry their index
  const std::string vllm =
      R"({"choices":[{"index":1,"logprobs":{"top_logprobs":[{"token_id:7":-0.1}]}},{"index":0,"logprobs":{"top_logprobs":[{"token_id:9":-0.2}]}}]})";
  const auto parts = ipa::split_top_k_replies(ipa::remote_protocol::openai, vllm, 2);
  std::vector<ipa::token_id> ids(1);
  std::vector<float> lps(1);
  ipa::parse_top_k_part(ipa::remote_protocol::openai, parts[0], 1, 512, ids, lps);
  CHECK(ids[0] == 9);
  ipa::parse_top_k_part(ipa::remote_protocol::openai, parts[1], 1, 512, ids, lps);
  CHECK(ids[0] == 7);
}

TEST_CASE("remote protocols: request bodies and the vLLM reply form") {
  const std::vector<ipa::token_id> prompt = {1, 403, 407};
  ipa::top_k_request r;
  r.k = 5;
  r.slot = 3;
  r.server_pick = 2;
  const auto native = nlohmann::json::parse(ipa::top_k_request_body(ipa::remote_protocol::llama_cpp, prompt, r));
  CHECK(native["prompt"] == nlohmann::json(prompt));
  CHECK(native["n_predict"] == 1);
  CHECK(native["n_probs"] == 5);
  CHECK(native["id_slot"] == 3);
  CHECK(native["logit_bias"][0][0] == 2);
  r = {};
  r.k = 3;
  r.model = "m";
  const auto oai = nlohmann::json::parse(ipa::top_k_request_body(ipa::remote_protocol::openai, prompt, r));
  CHECK(oai["max_tokens"] == 1);
  CHECK(oai["logprobs"] == 3);
  CHECK(oai["return_tokens_as_token_ids"] == true);
  CHECK(!oai.contains("id_slot"));
  // several prompts: a list of id lists
  const std::vector<ipa::token_id> second = {1, 500};
  const std::vector<std::span<const ipa::token_id>> prompts = {prompt, second};
  const auto both = nlohmann::json::parse(ipa::top_k_request_body(ipa::remote_protocol::llama_cpp, prompts, r));
  CHECK(both["prompt"] == nlohmann::json({prompt, second}));
  // vLLM: a map keyed "token_id:<id>", the sampled token added (k + 1 entries), -9999 floors
  const std::string vllm =
      R"({"choices":[{"logprobs":{"top_logprobs":[{"token_id:7":-0.1,"token_id:9":-2.5,"token_id:4":-9999.0,"token_id:8":-1.0}]}}]})";
  std::vector<ipa::token_id> ids(3);
  std::vector<float> lps(3);
  ipa::parse_top_k_reply(ipa::remote_protocol::openai, vllm, 3, 512, ids, lps);
  CHECK(ids == std::vector<ipa::token_id>{7, 8, 9});
  CHECK(lps[2] == -2.5f);
  CHECK_THROWS_WITH_AS(
      ipa::parse_top_k_reply(ipa::remote_protocol::openai,
                             R"({"choices":[{"logprobs":{"top_logprobs":[{" the":-0.1}]}}]})", 1, 512, ids, lps),
      doctest::Contains("--return-tokens-as-token-ids"), ipa::remote_error);
}

#ifdef IPA_TEST_CLI
namespace {

// Runs a command, returns its stdout (stderr goes to the test's output) and exit status.
std::pair<std::string, int> run_command(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

}  // namespace

TEST_CASE("ipa generate --base http://...: greedy text equals the local GGUF's; ipa train runs and resumes") {
  if (!have_server()) return;
  const auto server = start_server(4);
  const std::string ipa = IPA_TEST_CLI, models = ipa_test::model_dir();
  const std::string common = " --temperature 0 --max-new-tokens 100 --prompt 'Once upon a time' --prompt 'Tom had'";
  const auto remote =
      run_command(ipa + " generate --base " + server->url() + " --tokenizer " + models + "/tok512.bin" + common);
  const auto local = run_command(ipa + " generate --base " + models + "/stories260K.gguf" + common);
  REQUIRE(remote.second == 0);
  REQUIRE(local.second == 0);
  CHECK(remote.first.size() > 200);
  CHECK(remote.first == local.first);
  const auto per_row = run_command(ipa + " generate --base " + server->url() + " --base-per-row --tokenizer " + models +
                                   "/tok512.bin" + common);
  CHECK(per_row.first == local.first);
  // a URL without --tokenizer, a bad --base-top-k: usage errors
  CHECK(run_command(ipa + " generate --base " + server->url() + " --prompt x 2>/dev/null").second == 2);
  CHECK(run_command(ipa + " generate --base " + server->url() + " --tokenizer " + models +
                    "/tok512.bin --base-top-k 0 --prompt x 2>/dev/null")
            .second == 2);

  const std::string out =
      (std::filesystem::temp_directory_path() / ("ipa_remote_train_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(out);
  const std::string train = ipa + " train --base " + server->url() + " --tokenizer " + models +
                            "/tok512.bin --reward avoid:sad --prompts " + IPA_TEST_DATA_DIR +
                            "/story_openings_heldout.txt --algo rloo --batch 4 --max-new-tokens 24 --save-every 2 "
                            "--base-give-up-after 3 --out " +
                            out;
  REQUIRE(run_command(train + " --steps 2 2>/dev/null").second == 0);
  REQUIRE(run_command(ipa + " train --out " + out + " --resume --steps 3 2>/dev/null").second == 0);
  std::ifstream metrics(out + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  CHECK(lines == 3);
  metrics.close();
  // the server goes away mid-run: train ends with a clear error within --base-give-up-after; once
  // the server is back, --resume continues from the last checkpoint
  server->stop(SIGKILL);
  const auto start = std::chrono::steady_clock::now();
  const auto died = run_command(ipa + " train --out " + out + " --resume --steps 5 2>&1");
  CHECK(died.second == 1);
  CHECK(died.first.find("cannot connect") != std::string::npos);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 30);
  server->start();
  REQUIRE(run_command(ipa + " train --out " + out + " --resume --steps 4 2>/dev/null").second == 0);
  const auto tailored = run_command(ipa + " generate --base " + server->url() + " --tokenizer " + models +
                                    "/tok512.bin --adapter " + out + "/adapter --max-new-tokens 20 --prompt 'Once'");
  CHECK(tailored.second == 0);
  CHECK(tailored.first.rfind("Once", 0) == 0);
  const auto eval =
      run_command(ipa + " eval --base " + server->url() + " --tokenizer " + models + "/tok512.bin --adapter " + out +
                  "/adapter --reward avoid:sad --samples 1 --max-new-tokens 20 --json --prompts " + IPA_TEST_DATA_DIR +
                  "/story_openings_heldout.txt");
  REQUIRE(eval.second == 0);
  const auto summary = nlohmann::json::parse(eval.first);
  CHECK(summary["samples"] == 20);
  CHECK(summary["base_perplexity"].get<double>() > 1.0);
  std::filesystem::remove_all(out);
}
#endif
