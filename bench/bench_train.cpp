// SPDX-License-Identifier: MIT
// Adapter update throughput (tokens/s): one forward with activations, the mean next-token
// cross-entropy, the hand-written backward and one AdamW step, at B = 4, T = 64, on random
// weights: GPT-2 with 4 layers, dim 256, vocab 50257 (the shape llm.c's CPU trainer is measured
// on), its Llama equivalent, and the stories15M shape. Also the IPA fused loss path (stored base
// logits + alpha * adapter logits, exact KL to the base) on the 15M shape.
#include <benchmark/benchmark.h>

#include <vector>

#include <ipa/ipa.hpp>

namespace {

ipa::llama_config shape_of(int s) {
  ipa::llama_config c;
  if (s == 0) c = {288, 768, 6, 6, 6, 32000, 256};  // stories15M
  else c = {256, 688, 4, 8, 8, 50257, 1024};        // GPT-2-small-like: layers 4, dim 256, vocab 50257
  c.shared_classifier = true;
  return c;
}

template <class Model>
void run_steps(benchmark::State& state, Model model) {
  const bool fused = state.range(1) != 0;
  const std::size_t B = 4, T = 64, V = std::size_t(model.config().vocab_size), N = B * T;
  ipa::adamw opt(model.parameters().size(), {0.9, 0.999, 1e-8, 0.0});
  ipa::xoshiro256 rng(3);
  std::vector<ipa::token_id> tokens(N), targets(N);
  for (auto& t : tokens) t = ipa::token_id(rng() % V);
  for (std::size_t i = 0; i < N; ++i) targets[i] = (i + 1) % T == 0 ? -1 : tokens[i + 1];
  std::vector<float> dlogits(N * V), base(fused ? N * V : 0);
  for (auto& b : base) b = float(4 * ipa::uniform01(rng) - 2);
  for (auto _ : state) {
    model.forward(tokens, B, T);
    if (!fused) {
      benchmark::DoNotOptimize(ipa::cross_entropy<float>(model.logits(), targets, V, dlogits));
    } else {
      std::fill(dlogits.begin(), dlogits.end(), 0.0f);
      ipa::parallel_for(N, [&](std::size_t i) {
        thread_local std::vector<float> lp, lb, z;
        lp.resize(V), lb.resize(V), z.assign(V, 0.0f);
        const std::span<const float> b(base.data() + i * V, V);
        ipa::tailored_log_softmax<float>(b, model.logits().subspan(i * V, V), 1.0, lp);
        ipa::tailored_log_softmax<float>(b, z, 0.0, lb);
        std::span<float> dz(dlogits.data() + i * V, V);
        if (targets[i] >= 0) ipa::add_log_prob_grad<float>(lp, targets[i], -1.0 / double(N), dz);
        ipa::add_kl_grad<float>(lp, lb, 0.05 / double(N), dz);
      });
    }
    model.zero_grad();
    model.backward(dlogits);
    opt.step<float>(model.parameters(), model.gradients(), 1e-4);
    benchmark::ClobberMemory();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(N) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["params_M"] = double(model.parameters().size()) / 1e6;
  state.counters["threads"] = ipa::max_threads();
}

ipa::gpt2_config gpt2_shape() {
  ipa::gpt2_config c;
  c.dim = 256, c.hidden_dim = 1024, c.n_layers = 4, c.n_heads = 4, c.vocab_size = 50257, c.seq_len = 1024;
  return c;
}

// args: shape (0 = stories15M, 1 = Llama layers-4/dim-256/vocab-50257, 2 = GPT-2 of that
// shape), fused IPA loss (0/1)
void BM_train_step(benchmark::State& state) {
  if (state.range(0) == 2) run_steps(state, ipa::trainable_gpt2<float>(ipa::gpt2_weights::random(gpt2_shape(), 42)));
  else run_steps(state, ipa::trainable_llama<float>(ipa::llama_weights::random(shape_of(int(state.range(0))), 42)));
}

}  // namespace

BENCHMARK(BM_train_step)
    ->ArgNames({"shape", "ipa_loss"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

BENCHMARK_MAIN();
