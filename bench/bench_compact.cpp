// SPDX-License-Identifier: MIT
// Compact weights read in place (F32, F16, Q8_0, Q4_0, Q3_K_M, Q4_K_M, Q5_K_M GGUFs) beside llama.cpp's llama-bench
// on the same files, in one run: the 110M shape (dim 768, 12 layers, hidden 2048, vocab 32000)
// with random weights, written by ipa once into IPA_BENCH_TMP (default /tmp); Q4_0 and the K-quant mixes
// made from the F32 file by llama-quantize. Per type: the time to load,
// tokens/s at batch 1 and 16, prompt processing of 128 tokens; llama-bench's tg64 and pp128 right
// after (2 threads each). ipa's f32 model repacked for its f32 kernels is the third column.
// ipa's KV cache is f32, and for Q8_0 and Q4_K_M also f16 (the _kv_f16 rows), as llama-bench's is.
// Then the whole process to the first token: `ipa generate` against run.c on the same llama2.c
// checkpoint and llama-cli on the same GGUFs (wall time, peak resident memory).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <ipa/io/gguf.hpp>
#include <ipa/model/llama.hpp>

#include "support/made_up_model.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

std::string peer(const std::string& name) {
  const char* peers = std::getenv("IPA_PEERS_DIR");
  return std::string(peers ? peers : IPA_BENCH_PEERS_DIR) + "/llama.cpp/bin/" + name;
}

// The 110M-shape GGUF of a kind: F32, F16 and Q8_0 written by ipa; Q4_0 and the K-quant mixes made from
// the F32 file by llama-quantize (as users get them). Empty when llama-quantize is missing.
std::string model_file(const std::string& kind) {
  const char* dir = std::getenv("IPA_BENCH_TMP");
  const std::string path = std::string(dir ? dir : "/tmp") + "/ipa_bench_110m." + kind + ".gguf";
  if (std::filesystem::exists(path)) return path;
  for (ipa::weight_type type : {ipa::weight_type::f32, ipa::weight_type::f16, ipa::weight_type::q8_0})
    if (kind == ipa::weight_type_name(type)) {  // (llama.cpp needs a vocabulary: a made-up one)
      const auto tok = ipa_bench::made_up_tokenizer();
      ipa::save_gguf_llama(path, ipa::llama_weights::random(ipa_bench::shape_110m(), 7), &tok, type);
      return path;
    }
  const std::string quantize = peer("llama-quantize");
  if (!std::filesystem::exists(quantize)) return "";
  const std::string cmd = quantize + " " + model_file("F32") + " " + path + " " + kind + " > /dev/null 2>&1";
  return std::system(cmd.c_str()) == 0 ? path : "";
}

// The model as the CLI decodes it: compact types in place; F32 in place too, or `repacked`.
std::optional<ipa::llama_model> load(const std::string& kind, bool repacked) {
  const std::string path = model_file(kind);
  if (path.empty()) return std::nullopt;
  const auto f = ipa::gguf_file::load(path);
  return repacked ? ipa::llama_model(ipa::load_gguf_llama(f)) : ipa::llama_model(ipa::load_gguf_llama_compact(f));
}

// Decoding B rows (prompt: 4 tokens each), tokens/s over 64 steps; load seconds as a counter.
// As llama-bench measures tg64 and pp128: one state made before the clock starts and reset
// between runs (its context made once and cleared), a warm-up run first, the prompt outside the
// time of the steps.
void BM_ipa(benchmark::State& state, const char* kind, bool repacked, ipa::kv_cache_type kv = ipa::kv_cache_type::f32) {
  const int B = int(state.range(0));
  model_file(kind);  // (written or quantized before the clock starts)
  const auto t0 = clock_type::now();
  auto loaded = load(kind, repacked);
  if (!loaded) return state.SkipWithError("SKIPPED: no llama-quantize to make the file");
  ipa::llama_model& m = *loaded;
  m.set_kv_cache_type(kv);
  state.counters["load_s"] = std::chrono::duration<double>(clock_type::now() - t0).count();
  std::vector<float> logits(std::size_t(B) * m.vocab_size());
  std::vector<int> rows(static_cast<std::size_t>(B));
  for (int i = 0; i < B; ++i) rows[std::size_t(i)] = i;
  std::vector<ipa::token_id> tokens(std::size_t(B), 5);
  const std::vector<std::vector<ipa::token_id>> prompts(std::size_t(B), {1, 403, 407, 261});
  auto s = m.new_state(B, 256);
  auto start = [&] {
    s.reset();
    m.prefill(s, prompts, logits);
  };
  auto steps = [&] {
    for (int step = 0; step < 64; ++step) m.step(s, rows, tokens, logits);
  };
  start(), steps();  // warm-up
  std::size_t decoded = 0;
  for (auto _ : state) {
    state.PauseTiming();
    start();
    state.ResumeTiming();
    steps();
    decoded += std::size_t(B) * 64;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(decoded), benchmark::Counter::kIsRate);
}

// Prompt processing: one prompt of 128 tokens, the state made once and reset between runs.
void BM_ipa_pp128(benchmark::State& state, const char* kind, bool repacked,
                  ipa::kv_cache_type kv = ipa::kv_cache_type::f32) {
  auto loaded = load(kind, repacked);
  if (!loaded) return state.SkipWithError("SKIPPED: no llama-quantize to make the file");
  ipa::llama_model& m = *loaded;
  m.set_kv_cache_type(kv);
  std::vector<float> logits(m.vocab_size());
  std::vector<ipa::token_id> prompt(128);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = ipa::token_id(3 + i * 7 % 31000);
  const std::vector<std::vector<ipa::token_id>> prompts{prompt};
  auto s = m.new_state(1, 256);
  m.prefill(s, prompts, logits);  // warm-up
  std::size_t processed = 0;
  for (auto _ : state) {
    s.reset();
    m.prefill(s, prompts, logits);
    processed += prompt.size();
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(processed), benchmark::Counter::kIsRate);
}

// llama-bench on the same file (2 threads): its mean tokens/s for tg64 or pp128.
void BM_llama_bench(benchmark::State& state, const char* kind, const char* test) {
  const std::string bin = peer("llama-bench"), file = model_file(kind);
  if (!std::filesystem::exists(bin) || file.empty()) {
    state.SkipWithError(("SKIPPED: no " + bin + " or no llama-quantize").c_str());
    return;
  }
  const bool tg = std::string(test) == "tg64";
  const std::string cmd = bin + " -m " + file + " -t 2 -r 3 -o json " + (tg ? "-p 0 -n 64" : "-p 128 -n 0");
  double ts = 0;
  for (auto _ : state) {
    std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
    std::string out;
    for (char buf[4096]; pipe && std::fgets(buf, sizeof buf, pipe.get());) out += buf;
    const auto j = nlohmann::json::parse(out, nullptr, false);
    if (!j.is_array() || j.empty()) {
      state.SkipWithError(("llama-bench printed no JSON: " + out.substr(0, 200)).c_str());
      return;
    }
    ts = j[0].value("avg_ts", 0.0);
  }
  state.counters["tokens_per_s"] = ts;
}

// The 110M shape as a llama2.c checkpoint (the F32 GGUF's weights) and its tokenizer.bin.
std::pair<std::string, std::string> llama2c_file() {
  const char* dir = std::getenv("IPA_BENCH_TMP");
  const std::string path = std::string(dir ? dir : "/tmp") + "/ipa_bench_110m.bin", tok = path + ".tokenizer.bin";
  if (!std::filesystem::exists(path) || !std::filesystem::exists(tok))
    ipa_bench::write_llama2c(path, tok, ipa::llama_weights::random(ipa_bench::shape_110m(), 7));
  return {path, tok};
}

// Runs programs to their end, their output discarded: wall seconds and peak resident megabytes.
// A child's ru_maxrss also counts the process it was forked from (Linux keeps the larger of the
// forked copy's peak and the new program's), and by the start-up benches this one holds ~200 MB
// of earlier benches' heap: so the programs are started by a launcher forked before main, while
// the bench is a few megabytes, which waits for each and reports its time and peak over a pipe.
class launcher {
 public:
  launcher() {
    if (::pipe(requests_) != 0 || ::pipe(replies_) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(requests_[1]), ::close(replies_[0]);
      serve();
      ::_exit(0);
    }
    ::close(requests_[0]), ::close(replies_[1]);
  }
  ~launcher() {
    if (pid_ <= 0) return;
    ::close(requests_[1]);  // the launcher reads the end of its requests and exits
    ::waitpid(pid_, nullptr, 0);
    ::close(replies_[0]);
  }
  launcher(const launcher&) = delete;
  launcher& operator=(const launcher&) = delete;

  std::pair<double, double> run(const std::vector<std::string>& args) const {
    if (pid_ <= 0) throw std::runtime_error("the bench's launcher did not start");
    std::string request;
    for (const auto& a : args) request += a + '\0';
    const std::uint64_t size = request.size();
    reply r{};
    if (!write_all(requests_[1], &size, sizeof size) || !write_all(requests_[1], request.data(), request.size()) ||
        !read_all(replies_[0], &r, sizeof r))
      throw std::runtime_error("the bench's launcher went away");
    if (r.status != 0) throw std::runtime_error(args[0] + " failed (status " + std::to_string(r.status) + ")");
    return {r.seconds, r.peak_mb};
  }

 private:
  struct reply {
    double seconds, peak_mb;
    int status;
  };
  static bool write_all(int fd, const void* p, std::size_t n) {
    for (auto* c = static_cast<const char*>(p); n > 0;) {
      const ssize_t w = ::write(fd, c, n);
      if (w <= 0) return false;
      c += w, n -= std::size_t(w);
    }
    return true;
  }
  static bool read_all(int fd, void* p, std::size_t n) {
    for (auto* c = static_cast<char*>(p); n > 0;) {
      const ssize_t r = ::read(fd, c, n);
      if (r <= 0) return false;
      c += r, n -= std::size_t(r);
    }
    return true;
  }
  void serve() const {
    for (std::uint64_t size = 0; read_all(requests_[0], &size, sizeof size);) {
      std::string request(size, '\0');
      if (!read_all(requests_[0], request.data(), size)) return;
      std::vector<char*> argv;
      for (std::size_t at = 0; at < request.size(); at = request.find('\0', at) + 1) argv.push_back(&request[at]);
      argv.push_back(nullptr);
      const auto start = clock_type::now();
      const pid_t pid = ::fork();
      if (pid == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        ::dup2(null, 2);
        ::setenv("OMP_NUM_THREADS", "2", 1);
        ::execv(argv[0], argv.data());
        ::_exit(127);
      }
      int status = 0;
      rusage usage{};
      reply r{0, 0, -1};
      if (pid > 0 && ::wait4(pid, &status, 0, &usage) == pid) {
        r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
        r.peak_mb = double(usage.ru_maxrss) / 1024.0;
        r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (!write_all(replies_[1], &r, sizeof r)) return;
    }
  }

  int requests_[2] = {-1, -1}, replies_[2] = {-1, -1};
  pid_t pid_ = -1;
};
const launcher processes;  // (forked before main: see above)

// The whole process to the first token, as a user starts it, ipa against its peer on the same
// file, alternating (medians of 5): `ipa generate` (two threads) against run.c (the llama2.c
// checkpoint; one thread, as built) or llama-cli (GGUFs; two threads).
void BM_startup(benchmark::State& state, const char* kind) {
  const bool bin = std::string(kind) == "bin";
  std::string file, tok;
  if (bin) std::tie(file, tok) = llama2c_file();
  else file = model_file(kind);
  const std::string cli = IPA_BENCH_CLI, run_c = IPA_BENCH_RUN_C, llama_cli = peer("llama-cli");
  const std::string peer_bin = bin ? run_c : llama_cli;
  if (cli.empty() || file.empty() || !std::filesystem::exists(peer_bin))
    return state.SkipWithError(("SKIPPED: no ipa CLI, no " + peer_bin + " or no llama-quantize").c_str());
  std::vector<std::string> ipa = {cli, "generate",      "--base", file, "--prompt", "", "--max-new-tokens",
                                  "1", "--temperature", "0"};
  if (bin) ipa.insert(ipa.end(), {"--tokenizer", tok});
  const std::vector<std::string> other =
      bin ? std::vector<std::string>{run_c, file, "-z", tok, "-n", "1", "-t", "0", "-i", ""}
          : std::vector<std::string>{llama_cli, "-m", file,     "-p", "t5",      "-n",         "1",
                                     "-t",      "2",  "--temp", "0",  "-no-cnv", "--no-warmup"};
  processes.run(ipa);  // the file into the page cache, as for a user who ran it before
  std::vector<double> ipa_s, ipa_mb, peer_s, peer_mb;
  for (auto _ : state)
    for (int round = 0; round < 5; ++round) {
      const auto [a, am] = processes.run(ipa);
      const auto [b, bm] = processes.run(other);
      ipa_s.push_back(a), ipa_mb.push_back(am), peer_s.push_back(b), peer_mb.push_back(bm);
    }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  state.counters["ipa_s"] = median(ipa_s);
  state.counters["peer_s"] = median(peer_s);
  state.counters["ratio"] = median(ipa_s) / median(peer_s);  // target <= 1.5
  state.counters["ipa_MB"] = median(ipa_mb);
  state.counters["peer_MB"] = median(peer_mb);
  state.counters["file_MB"] = double(std::filesystem::file_size(file)) / (1024.0 * 1024.0);
  state.SetLabel(bin ? "ipa vs run.c" : "ipa vs llama-cli");
}

// ipa and llama-bench alternate, type by type, so that both see the same moment of the host.
// (llama-bench keeps its KV cache in f16, its default; the _kv_f16 rows are ipa doing the same.)
BENCHMARK_CAPTURE(BM_ipa, f32_repacked, "F32", true)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, f32_in_place, "F32", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f32_tg64, "F32", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, f16_in_place, "F16", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f16_tg64, "F16", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q8_0_in_place, "Q8_0", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q8_0_in_place_kv_f16, "Q8_0", false, ipa::kv_cache_type::f16)
    ->Arg(1)
    ->Arg(16)
    ->Iterations(3)
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q8_0_tg64, "Q8_0", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q4_0_in_place, "Q4_0", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q4_0_tg64, "Q4_0", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q4_k_m_in_place, "Q4_K_M", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q4_k_m_in_place_kv_f16, "Q4_K_M", false, ipa::kv_cache_type::f16)
    ->Arg(1)
    ->Arg(16)
    ->Iterations(3)
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q4_k_m_tg64, "Q4_K_M", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q5_k_m_in_place, "Q5_K_M", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q5_k_m_tg64, "Q5_K_M", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q3_k_m_in_place, "Q3_K_M", false)->Arg(1)->Arg(16)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q3_k_m_tg64, "Q3_K_M", "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, f32_repacked, "F32", true)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f32_pp128, "F32", "pp128")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, q8_0_in_place, "Q8_0", false)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, q8_0_in_place_kv_f16, "Q8_0", false, ipa::kv_cache_type::f16)
    ->Iterations(3)
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q8_0_pp128, "Q8_0", "pp128")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, q4_k_m_in_place, "Q4_K_M", false)->Iterations(3)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q4_k_m_pp128, "Q4_K_M", "pp128")->Iterations(1)->Unit(benchmark::kSecond);

BENCHMARK_CAPTURE(BM_startup, bin, "bin")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_startup, f32, "F32")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_startup, q8_0, "Q8_0")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_startup, q4_k_m, "Q4_K_M")->Iterations(1)->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
