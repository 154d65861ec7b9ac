// SPDX-License-Identifier: MIT
// A base behind llama.cpp's llama-server (../shared/peers), decoded by ipa one token per step
// (remote_base), against the same server generating the same number of tokens on its own (one
// request holding every row, n_predict N): for stories260K.gguf and for a 110M-shape GGUF with
// random weights that the bench writes (llama2.c's stories110M shape: dim 768, 12 layers, vocab
// 32000), at B = 1 and B = 8 rows (8 slots), with and without the default adapter (2 layers, dim
// 64), with ipa's steps batched (one request a step, the default) or one request per row, and
// batched with the top-k renormalised (remote_options::renormalize_top_k, what `ipa generate`
// and `ipa train` ask for: llama-server then ranks the top 20 with a partial sort). Both
// sides run greedy from the same one-token prompt; every number is tokens per second of wall time
// over all rows, and `ratio` is ipa's over the server's, measured in the same round. Two more
// yardsticks from the same round: the server alone also reporting the top-20 (what every ipa
// step asks for, in the same form), and a bare client sending ipa's requests one after the other
// (`stepwise`).
//   ./build/bench/bench_remote                 (~5 minutes; IPA_PEERS_DIR, IPA_MODEL_DIR)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include <ipa/decode/decoder.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/model/llama.hpp>
#include <ipa/remote/remote_base.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

#include "support/llama_server.hpp"
#include "support/made_up_model.hpp"

namespace {

enum model_kind { stories260K, random110M };

std::string model_dir() {
  const char* dir = std::getenv("IPA_MODEL_DIR");
  return dir && *dir ? dir : IPA_BENCH_MODEL_DIR;
}

// The 110M-shape GGUF (F32, random weights, a made-up 32000-token vocabulary), written once.
std::string random_110M_gguf() {
  const std::string path = (std::filesystem::temp_directory_path() / "ipa_bench_remote_110M.gguf").string();
  if (std::filesystem::exists(path)) return path;
  const auto tok = ipa_bench::made_up_tokenizer();
  ipa::save_gguf_llama(path + ".tmp", ipa::llama_weights::random(ipa_bench::shape_110m(), 1234), &tok);
  std::filesystem::rename(path + ".tmp", path);
  return path;
}

// One server per model, 8 slots of 256 tokens, started on first use and kept for the process.
ipa_test::llama_server& server(model_kind m) {
  static std::map<model_kind, std::unique_ptr<ipa_test::llama_server>> servers;
  auto& s = servers[m];
  if (!s) {
    const std::string bin = ipa_test::peers_dir(IPA_BENCH_PEERS_DIR) + "/llama.cpp/bin/llama-server";
    const std::string gguf = m == stories260K ? model_dir() + "/stories260K.gguf" : random_110M_gguf();
    s = std::make_unique<ipa_test::llama_server>(bin, gguf, 8, 8 * 256, 0, m == stories260K ? 1 : 2);
  }
  return *s;
}

// The server alone: B rows (one request holding B prompts, one slot each) generating N tokens
// each; with `probs`, reporting the top-20 log-probs of every token as well (what each ipa step
// asks for; `renormalized`: as post-sampling probabilities after a top_k sampler of 20, the server
// then sampling among them). One connection: llama-server gives each kept-alive connection one of
// its HTTP threads. Wall time, and the server's own account of it (`timings`, the slowest row's).
struct server_times {
  double wall = 0;       ///< the request, sent to answered
  double evaluated = 0;  ///< prompt_ms + predicted_ms: the prompt's token, then N - 1 more
  double predicted = 0;  ///< predicted_ms: what its predicted_per_second divides N by
};
server_times server_alone_seconds(ipa_test::llama_server& s, std::size_t B, std::size_t N, bool probs = false,
                                  bool renormalized = false) {
  static ipa::http_batch_client client;
  nlohmann::json body = {{"prompt", std::vector<std::vector<int>>(B, {1})},
                         {"n_predict", N},
                         {"ignore_eos", true},
                         {"cache_prompt", false},
                         {"samplers", {"top_k"}},
                         {"top_k", 1},
                         {"n_probs", probs ? 20 : 0}};
  if (probs && renormalized) {
    body["post_sampling_probs"] = true;
    body["top_k"] = 20;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto reply = client.run({{s.url() + "/completion", body.dump()}});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto j = nlohmann::json::parse(reply[0].body, nullptr, false);
  if (reply[0].status != 200 || j.is_discarded())
    throw ipa::remote_error("server alone: " + reply[0].body.substr(0, 200));
  server_times t{seconds, 0, 0};
  for (const auto& row : j.is_array() ? j : nlohmann::json::array({j})) {
    if (row.value("tokens_predicted", 0) != int(N))
      throw ipa::remote_error("server alone: a row predicted " + std::to_string(row.value("tokens_predicted", 0)));
    const nlohmann::json timings = row.value("timings", nlohmann::json::object());
    const double prompt_ms = timings.value("prompt_ms", 0.0), predicted_ms = timings.value("predicted_ms", 0.0);
    t.evaluated = std::max(t.evaluated, (prompt_ms + predicted_ms) / 1e3);
    t.predicted = std::max(t.predicted, predicted_ms / 1e3);
  }
  return t;
}

// The floor of any client that asks one token at a time: the same requests as ipa's batched
// steps (all B rows in one request, top-20, the prompt growing by one token a step), sent one
// after the other with nothing computed between them.
double server_stepwise_seconds(ipa_test::llama_server& s, std::size_t B, std::size_t N, bool renormalized) {
  static ipa::http_batch_client client;
  std::vector<std::vector<ipa::token_id>> rows(B, std::vector<ipa::token_id>{1});
  ipa::top_k_request r;
  r.k = 20;
  r.renormalized = renormalized;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t t = 0; t < N; ++t) {
    std::vector<std::span<const ipa::token_id>> prompts(rows.begin(), rows.end());
    const auto reply =
        client.run({{s.url() + "/completion", ipa::top_k_request_body(ipa::remote_protocol::llama_cpp, prompts, r)}});
    if (reply[0].status != 200) throw ipa::remote_error("stepwise: " + reply[0].body.substr(0, 200));
    for (auto& row : rows) row.push_back(ipa::token_id(300 + (t + row.size()) % 200));
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ipa through the server: B rows, N greedy tokens, with or without the default adapter.
double ipa_seconds(const ipa::remote_base& base, const ipa::llama_model* adapter, std::size_t B, std::size_t N) {
  std::vector<ipa::weighted<ipa::llama_model>> experts;
  if (adapter) experts.push_back(ipa::with_alpha(*adapter, 1.0f));
  const ipa::ipa_decoder<ipa::remote_base, ipa::llama_model> decoder(base, experts);
  ipa::generation_config g;
  g.max_new_tokens = N;
  ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
  ipa::xoshiro256 rng(1);
  const auto start = std::chrono::steady_clock::now();
  const ipa::rollout r = decoder.generate(ipa::prompt_list(B, {1}), g, pick, rng);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (std::size_t b = 0; b < B; ++b)
    if (r.response_length(b) != N) throw ipa::remote_error("ipa: a row stopped early");
  return seconds;
}

// CPU seconds this process has used (all its threads).
double process_cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// How ipa's requests go out: all rows in one request a step (remote_options::batch_rows), the
// same with the top-k renormalised, one request per row pinned to a slot on kept-alive
// connections, or the same on fresh connections.
enum request_form { batched, per_row, per_row_fresh, renormalized };

// args: model, rows, tokens per row, with the default adapter (0/1), request_form
void BM_remote_decode(benchmark::State& state) {
  const auto m = model_kind(state.range(0));
  const std::size_t B = std::size_t(state.range(1)), N = std::size_t(state.range(2));
  const bool with_adapter = state.range(3) != 0;
  const auto form = request_form(state.range(4));
  ipa_test::llama_server& s = server(m);
  ipa::remote_options o;
  o.urls = {s.url()};
  o.batch_rows = form == batched || form == renormalized;
  o.reuse_connections = form != per_row_fresh;
  o.renormalize_top_k = form == renormalized;
  const ipa::remote_base base(o);
  std::unique_ptr<ipa::llama_model> adapter;
  if (with_adapter) {
    ipa::llama_config c{64, 172, 2, 8, 8, int(base.vocab_size()), 256};
    adapter = std::make_unique<ipa::llama_model>(ipa::llama_weights::random(c, 7));  // the default adapter's shape
  }
  server_alone_seconds(s, B, 4);  // warm both paths
  ipa_seconds(base, adapter.get(), B, 4);
  std::vector<double> ratios, ipa_rates, server_rates, overheads, client_cpu, probs_rates, stepwise_rates,
      adapter_costs, evaluated_ratios, predicted_ratios;
  for (auto _ : state) {
    const server_times times = server_alone_seconds(s, B, N);
    const double alone = times.wall;
    probs_rates.push_back(double(B * N) / server_alone_seconds(s, B, N, true, form == renormalized).wall);
    stepwise_rates.push_back(double(B * N) / server_stepwise_seconds(s, B, N, form == renormalized));
    const double cpu = process_cpu_seconds();
    const double through = ipa_seconds(base, adapter.get(), B, N);
    client_cpu.push_back((process_cpu_seconds() - cpu) / double(B * N) * 1e3);
    const double steps = double(N);  // the prompt, then N - 1 tokens
    server_rates.push_back(double(B * N) / alone);
    ipa_rates.push_back(double(B * N) / through);
    ratios.push_back(alone / through);
    evaluated_ratios.push_back(times.evaluated / through);
    predicted_ratios.push_back(times.predicted / through);
    overheads.push_back((through - alone) / steps * 1e3);
    // the adapter's cost: the same decode without it, in the same round (the host's speed drifts
    // between benchmark rows by more than the few percent measured here)
    if (adapter) adapter_costs.push_back(through / ipa_seconds(base, nullptr, B, N));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  state.counters["server_tok/s"] = median(server_rates);
  state.counters["server+probs_tok/s"] = median(probs_rates);  // the server alone, also reporting top-20
  state.counters["stepwise_tok/s"] = median(stepwise_rates);   // a bare client, one batched request a step
  state.counters["ipa_tok/s"] = median(ipa_rates);
  state.counters["ratio"] = median(ratios);
  // the same against the server's timings: its prompt's token and N - 1 more (N evaluations, as
  // ipa's N requests), and predicted_ms alone (N tokens over N - 1 evaluations)
  state.counters["ratio_timings"] = median(evaluated_ratios);
  state.counters["ratio_predicted"] = median(predicted_ratios);
  state.counters["overhead_ms/step"] = median(overheads);    // wall time per step beyond the server alone's
  state.counters["client_cpu_ms/row"] = median(client_cpu);  // ipa's own CPU per row and step (JSON, HTTP, fusion)
  if (adapter) state.counters["adapter_cost"] = median(adapter_costs);  // time with the adapter / without
  state.SetLabel(std::string(m == stories260K ? "stories260K" : "110M-shape") + " B=" + std::to_string(B) +
                 (with_adapter ? " +adapter" : "") +
                 (form == batched        ? " batched"
                  : form == renormalized ? " batched renormalized"
                  : form == per_row      ? " per-row"
                                         : " per-row fresh"));
}

}  // namespace

BENCHMARK(BM_remote_decode)
    ->Args({stories260K, 1, 100, 0, batched})
    ->Args({stories260K, 8, 100, 0, batched})
    ->Args({stories260K, 8, 100, 0, per_row})
    ->Args({stories260K, 1, 100, 0, per_row_fresh})
    ->Args({stories260K, 1, 100, 0, renormalized})
    ->Args({stories260K, 8, 100, 0, renormalized})
    ->Args({random110M, 1, 32, 0, batched})
    ->Args({random110M, 1, 32, 1, batched})
    ->Args({random110M, 8, 32, 0, batched})
    ->Args({random110M, 8, 32, 0, per_row})
    ->Args({random110M, 8, 32, 1, batched})
    ->Args({random110M, 1, 32, 0, renormalized})
    ->Args({random110M, 1, 32, 1, renormalized})
    ->Args({random110M, 8, 32, 0, renormalized})
    ->Args({random110M, 8, 32, 1, renormalized})
    ->Iterations(5)
    ->Unit(benchmark::kSecond);

BENCHMARK_MAIN();
