// SPDX-License-Identifier: MIT
// A base that lives behind an inference server, seen as IPA's paper sees GPT-3: a SparsePolicy
// that reveals the top-k (id, log-prob) of each row's next token. Every step sends each live
// row's ids so far (never re-tokenized text) and reads back the top-k; the server's prompt cache
// makes that one token of server compute per row. A step is one request per server holding all
// of its rows (the multi-prompt form: the server queues them together and evaluates them in one
// batch, picking for each the slot whose cache matches it best), or, with batch_rows off, one
// request per row pinned to a llama-server slot; rows are spread over one or more servers.
// The decoder starts a step, runs the adapters, then collects the answers (start_* / finish_top_k).
//
// Faults: each request has a timeout; connection errors, 5xx (503 while loading) and llama-
// server's missing probabilities are retried with backoff until `give_up_after_s` (a step is a
// pure function of the ids and K, so asking again is safe; a restarted server recomputes from
// the ids). Anything else (4xx, malformed JSON, fewer than K entries, NaN, ids outside the
// vocabulary, a truncated prompt) is a remote_error naming the server, expected and found.
//
// Connections: kept alive, one per request in flight. llama-server answers a reused connection ~40 ms
// late unless the client acknowledges the reply's head at once (http.hpp does; measured on
// loopback with stories260K: 0.57 ms a step kept alive, 0.82 ms with a fresh connection each,
// 44 ms kept alive without the prompt ACK).
// B = rows, K = top-k, V = vocabulary.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/policy.hpp"
#include "ipa/remote/http.hpp"
#include "ipa/remote/protocol.hpp"
#include "ipa/text/vocabulary.hpp"

namespace ipa {

namespace detail {
// Well-formed UTF-8 (no check of overlong forms: only whether a server could show it as is).
inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t j = 1; j < n; ++j)
      if ((static_cast<unsigned char>(s[i + j]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}
}  // namespace detail

/// How to reach the base and how patient to be.
struct remote_options {
  std::vector<std::string> urls;            ///< http://HOST:PORT, one per server; rows are spread over them
  std::optional<remote_protocol> protocol;  ///< unset: openai for a URL ending in /v1, else llama_cpp
  std::size_t top_k = 20;                   ///< K log-probs per row and step
  long request_timeout_ms = 30000;          ///< one request, connecting included
  double give_up_after_s = 60.0;            ///< a request failing this long ends the call
  bool reuse_connections = true;            ///< keep-alive (see the file comment)
  /// One request per server and step holding all of its rows (the multi-prompt form: the server
  /// queues them together and evaluates them in one batch), instead of one request per row pinned
  /// to a slot (rows arriving apart can be split over two server passes: 110M shape, 8 rows,
  /// 121-125 tok/s per row against 154-161 batched in bench_remote).
  bool batch_rows = true;
  /// Each row's top-k log-probs renormalised over themselves (they then sum to 1 over the K):
  /// what decoding with tail_policy::restrict_to_top_k makes of them anyway (a constant per row
  /// and step, which the fusion's softmax removes), and cheaper for llama-server, which ranks the
  /// top K with a partial sort instead of sorting the whole vocabulary for every row and token
  /// (protocol.hpp). Leave it off where the absolute values matter: tail_policy::uniform, a base
  /// perplexity.
  bool renormalize_top_k = false;
  std::string model;                    ///< OpenAI's "model"; default: the server's first
  std::size_t max_token_checks = 2048;  ///< ids whose text is compared with the server's
};

/// One server as found on connecting.
struct remote_server {
  std::string url;  ///< http://HOST:PORT, no trailing slash
  remote_protocol protocol;
  std::string model;          ///< the model it serves (/v1/models)
  std::size_t vocab = 0;      ///< 0: the server does not say
  std::size_t context = 0;    ///< tokens per row (llama-server: per slot); 0: unknown
  int slots = 0;              ///< llama-server's --parallel; 0: not llama-server
  token_id server_pick = -1;  ///< the token llama-server is asked to sample (its EOS)
};

/// A base model behind one or more inference servers, as a SparsePolicy.
class remote_base {
 public:
  struct state_type {
    std::vector<std::vector<token_id>> tokens;   ///< every row's ids so far
    std::vector<int> pending;                    ///< rows whose answers are in flight
    std::vector<std::vector<std::size_t>> sent;  ///< the requests in flight: indices into pending
  };

  /// Connects to every server (waiting up to give_up_after_s for one still loading) and checks
  /// its vocabulary size against `vocab` (the adapter's tokenizer; 0: take the first server's)
  /// and, when `table` is given, the text of its tokens (check_tokens). Throws config_error on a
  /// mismatch, remote_error when a server cannot be reached.
  remote_base(remote_options options, std::size_t vocab = 0, const token_table* table = nullptr)
      : options_(std::move(options)), vocab_(vocab) {
    if (options_.urls.empty()) throw config_error("remote_base: no server URL");
    if (options_.top_k == 0) throw config_error("remote_base: top_k must be >= 1");
    if (!(options_.give_up_after_s > 0) || options_.request_timeout_ms <= 0)
      throw config_error("remote_base: the request timeout and give_up_after_s must be > 0");
    http_options h;
    h.timeout_ms = options_.request_timeout_ms;
    h.connect_timeout_ms = std::min<long>(options_.request_timeout_ms, 2000);
    h.reuse_connections = options_.reuse_connections;
    client_ = std::make_unique<http_batch_client>(h);
    for (const std::string& url : options_.urls) servers_.push_back(connect(url));
    // a kept-alive connection holds one of llama-server's HTTP threads (it has --parallel + 2):
    // never open more than a server has slots
    if (options_.reuse_connections && cached_rows() > 0) {
      int most = 0;
      for (const auto& s : servers_) most = std::max(most, s.slots);
      client_->limit_host_connections(most);
    }
    if (vocab_ == 0) vocab_ = servers_[0].vocab;
    if (vocab_ == 0)
      throw config_error("remote_base: " + servers_[0].url +
                         " does not report its vocabulary size; pass it (the size of the adapter's tokenizer)");
    for (const remote_server& s : servers_) {
      if (s.vocab && s.vocab != vocab_)
        throw config_error(s.url + " serves a vocabulary of " + std::to_string(s.vocab) + " tokens, " +
                           (vocab ? "the adapter's tokenizer has " : servers_[0].url + " ") + std::to_string(vocab_) +
                           "; base and adapter must share a tokenizer");
      // llama-server wants room for the token it samples: a prompt may fill a slot but one
      if (s.context) context_ = std::min(context_, s.slots ? s.context - 1 : s.context);
    }
    if (options_.top_k > vocab_)
      throw config_error("remote_base: top_k must be in [1, " + std::to_string(vocab_) + "], found " +
                         std::to_string(options_.top_k));
    if (table) check_tokens(*table);
  }

  /// Compares the servers' token texts with a tokenizer's table (llama-server's /detokenize; a
  /// server that cannot detokenize is trusted on its size alone). Throws config_error naming the
  /// first id that differs.
  void check_tokens(const token_table& table) const {
    for (const remote_server& s : servers_)
      if (s.slots) check_token_table(s, table);
  }

  std::size_t vocab_size() const noexcept { return vocab_; }
  std::size_t context_length() const noexcept { return context_; }
  std::size_t top_k() const noexcept { return options_.top_k; }
  /// Whether the top-k log-probs come renormalised over the k (remote_options::renormalize_top_k).
  bool renormalizes_top_k() const noexcept { return options_.renormalize_top_k; }
  const std::vector<remote_server>& servers() const noexcept { return servers_; }
  /// Rows that keep their own prompt cache: the servers' slots in all (0: the servers don't say).
  /// More rows than this still decode right, but share slots and recompute their prompts.
  std::size_t cached_rows() const noexcept {
    std::size_t n = 0;
    for (const auto& s : servers_) {
      if (s.slots == 0) return 0;
      n += std::size_t(s.slots);
    }
    return n;
  }
  /// HTTP requests sent so far (retries included), connecting excluded.
  std::size_t requests_sent() const noexcept { return requests_; }
  /// Row queries sent so far (a row's next token asked for; retries included): a batched
  /// request carries several.
  std::size_t rows_sent() const noexcept { return rows_; }

  state_type new_state(int batch, int capacity) const {
    state_type s;
    s.tokens.resize(std::size_t(std::max(batch, 0)));
    for (auto& t : s.tokens) t.reserve(std::size_t(std::max(capacity, 0)));
    return s;
  }

  // The SparsePolicy contract: a whole step at once.
  void prefill_top_k(state_type& s, const prompt_list& prompts, std::span<token_id> ids, std::span<float> lps) const {
    start_prefill_top_k(s, prompts);
    finish_top_k(s, ids, lps);
  }
  void step_top_k(state_type& s, std::span<const int> rows, std::span<const token_id> tokens, std::span<token_id> ids,
                  std::span<float> lps) const {
    start_step_top_k(s, rows, tokens);
    finish_top_k(s, ids, lps);
  }

  // In halves, so that the caller computes while the server answers.
  /// Sends every row's prompt.
  void start_prefill_top_k(state_type& s, const prompt_list& prompts) const {
    if (prompts.size() != s.tokens.size())
      throw shape_error("remote_base: " + std::to_string(prompts.size()) + " prompts for a state of " +
                        std::to_string(s.tokens.size()) + " rows");
    std::vector<int> rows(prompts.size());
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      check_ids(prompts[b], b);
      s.tokens[b] = prompts[b];
      rows[b] = int(b);
    }
    send(s, std::move(rows));
  }
  /// Appends one token to each listed row and sends those rows.
  void start_step_top_k(state_type& s, std::span<const int> rows, std::span<const token_id> tokens) const {
    if (rows.size() != tokens.size())
      throw shape_error("remote_base: " + std::to_string(rows.size()) + " rows but " + std::to_string(tokens.size()) +
                        " tokens");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] < 0 || std::size_t(rows[i]) >= s.tokens.size())
        throw shape_error("remote_base: row " + std::to_string(rows[i]) + " outside the state's " +
                          std::to_string(s.tokens.size()) + " rows");
      const token_id t[1] = {tokens[i]};
      check_ids(t, std::size_t(rows[i]));
      s.tokens[std::size_t(rows[i])].push_back(tokens[i]);
    }
    send(s, std::vector<int>(rows.begin(), rows.end()));
  }
  /// Waits for the rows sent last (retrying what failed) and writes (n x K) ids and log-probs.
  void finish_top_k(state_type& s, std::span<token_id> ids, std::span<float> lps) const {
    const std::size_t n = s.pending.size(), k = options_.top_k;
    if (ids.size() < n * k || lps.size() < n * k)
      throw shape_error("remote_base: room for " + std::to_string(std::min(ids.size(), lps.size())) +
                        " top-k entries, " + std::to_string(n * k) + " needed");
    std::vector<http_response> replies = client_->wait();
    std::vector<std::vector<std::size_t>> asked = std::move(s.sent);  // replies[i] answers pending rows asked[i]
    std::vector<std::size_t> failed;
    std::string last_problem;
    const auto first_failure = std::chrono::steady_clock::now();
    for (int attempt = 0;; ++attempt) {
      failed.clear();
      for (std::size_t i = 0; i < replies.size(); ++i)
        read_replies(s, asked[i], replies[i], ids, lps, failed, last_problem);
      if (failed.empty()) break;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - first_failure).count();
      if (waited >= options_.give_up_after_s)
        throw remote_error("remote base: no usable answer for row " + std::to_string(s.pending[failed[0]]) + " after " +
                           std::to_string(attempt + 1) + " tries in " + format_seconds(waited) + " (give_up_after_s " +
                           format_seconds(options_.give_up_after_s) + "); last: " + last_problem);
      back_off(attempt);
      asked = requests_of(s, failed);
      std::vector<http_request> again;
      for (const auto& rows : asked) again.push_back(request_for(s, rows, /*retry=*/true));
      ask(std::move(again), failed.size());
      replies = client_->wait();
    }
    s.pending.clear();
  }

 private:
  static std::string format_seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", s);
    return buf;
  }

  // 25 ms, doubling to a second: a restarting server is found within a second of coming back
  static void back_off(int attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1000, 25 << std::min(attempt, 6))));
  }

  // Starts a batch of requests carrying `rows` row queries, counted in requests_sent() and rows_sent().
  void ask(std::vector<http_request> batch, std::size_t rows) const {
    requests_ += batch.size();
    rows_ += rows;
    client_->start(std::move(batch));
  }

  const remote_server& server_of(std::size_t row) const { return servers_[row % servers_.size()]; }

  void check_ids(std::span<const token_id> ids, std::size_t row) const {
    // an id outside the vocabulary makes llama-server fail every slot at once: never send one
    for (token_id t : ids)
      if (t < 0 || std::size_t(t) >= vocab_)
        throw config_error("remote_base: row " + std::to_string(row) + " holds token id " + std::to_string(t) +
                           ", outside the vocabulary [0, " + std::to_string(vocab_) + ")");
  }

  // The requests that carry pending rows `js` (indices into s.pending): one per row, or with
  // batch_rows one per server holding all of its rows.
  std::vector<std::vector<std::size_t>> requests_of(const state_type& s, std::span<const std::size_t> js) const {
    std::vector<std::vector<std::size_t>> out;
    if (!options_.batch_rows) {
      for (std::size_t j : js) out.push_back({j});
      return out;
    }
    out.resize(servers_.size());
    for (std::size_t j : js) out[std::size_t(s.pending[j]) % servers_.size()].push_back(j);
    std::erase_if(out, [](const auto& rows) { return rows.empty(); });
    return out;
  }

  // A retry asks for the raw form: in the renormalised one llama-server samples its own token
  // among the top K, and drops the probabilities when that token is a partial UTF-8 sequence; the
  // raw form has it pick EOS (protocol.hpp), and read_replies renormalises its answer the same.
  http_request request_for(const state_type& s, const std::vector<std::size_t>& js, bool retry = false) const {
    const std::size_t row = std::size_t(s.pending[js[0]]);
    const remote_server& server = server_of(row);
    top_k_request r;
    r.k = options_.top_k;
    // row b's cache lives in one slot of its server: rows b, b + S, ... share a server
    if (!options_.batch_rows && server.slots > 0) r.slot = int((row / servers_.size()) % std::size_t(server.slots));
    r.renormalized = options_.renormalize_top_k && !retry && server.slots > 0;
    r.server_pick = server.server_pick;
    r.model = server.model;
    const char* path = server.protocol == remote_protocol::llama_cpp ? "/completion" : "/v1/completions";
    if (!options_.batch_rows) return {server.url + path, top_k_request_body(server.protocol, s.tokens[row], r)};
    std::vector<std::span<const token_id>> prompts;
    for (std::size_t j : js) prompts.emplace_back(s.tokens[std::size_t(s.pending[j])]);
    return {server.url + path, top_k_request_body(server.protocol, prompts, r)};
  }

  void send(state_type& s, std::vector<int> rows) const {
    s.pending = std::move(rows);
    std::vector<std::size_t> all(s.pending.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    s.sent = requests_of(s, all);
    std::vector<http_request> batch;
    batch.reserve(s.sent.size());
    for (const auto& js : s.sent) batch.push_back(request_for(s, js));
    ask(std::move(batch), s.pending.size());
  }

  // Fills ids/lps (rows of K, by pending index) from the reply to a request that carried pending
  // rows `js`; the rows worth asking again go to `failed`, with what went wrong.
  void read_replies(const state_type& s, const std::vector<std::size_t>& js, const http_response& r,
                    std::span<token_id> ids, std::span<float> lps, std::vector<std::size_t>& failed,
                    std::string& last_problem) const {
    const remote_server& server = server_of(std::size_t(s.pending[js[0]]));
    auto retry_all = [&](const std::string& problem) {
      failed.insert(failed.end(), js.begin(), js.end());
      last_problem = server.url + ": " + problem;
    };
    if (!r.completed()) return retry_all("no answer (" + r.transport_error + ")");
    if (r.status == 503) return retry_all("HTTP 503 (loading or busy)");
    if (r.status >= 500) return retry_all("HTTP " + std::to_string(r.status) + ": " + detail::excerpt(r.body));
    if (r.status != 200)
      throw remote_error(server.url + " answered HTTP " + std::to_string(r.status) + ": " + detail::excerpt(r.body));
    const std::size_t k = options_.top_k;
    auto renormalize = [&](std::size_t j) {
      if (options_.renormalize_top_k) log_softmax(lps.subspan(j * k, k));  // over the k: log p_i - log sum p
    };
    try {
      if (!options_.batch_rows) {
        parse_top_k_reply(server.protocol, r.body, k, vocab_, ids.subspan(js[0] * k, k), lps.subspan(js[0] * k, k));
        renormalize(js[0]);
        return;
      }
      const std::vector<nlohmann::json> parts = split_top_k_replies(server.protocol, r.body, js.size());
      for (std::size_t i = 0; i < js.size(); ++i) try {
          parse_top_k_part(server.protocol, parts[i], k, vocab_, ids.subspan(js[i] * k, k), lps.subspan(js[i] * k, k));
          renormalize(js[i]);
        } catch (const bad_reply& e) {
          if (!e.retryable) throw;
          failed.push_back(js[i]);
          last_problem = server.url + ": " + e.what();
        }
    } catch (const bad_reply& e) {
      if (e.retryable) return retry_all(e.what());
      throw remote_error(server.url + " (" + to_string(server.protocol) + "): " + e.what());
    }
  }

  // GET/POST one request, retrying connection errors and 503 until give_up_after_s.
  http_response exchange(const std::string& url, const std::string& body = {}) const {
    const auto start = std::chrono::steady_clock::now();
    for (int attempt = 0;; ++attempt) {
      http_response r = std::move(client_->run({{url, body}})[0]);
      if (r.completed() && r.status != 503) return r;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited >= options_.give_up_after_s)
        throw remote_error(url + ": " +
                           (r.completed() ? "still loading (HTTP 503)" : "cannot connect (" + r.transport_error + ")") +
                           " after " + format_seconds(waited) + "; is the server running?");
      back_off(attempt);
    }
  }

  static nlohmann::json json_of(const std::string& url, const http_response& r) {
    if (r.status != 200)
      throw remote_error(url + " answered HTTP " + std::to_string(r.status) + ": " + detail::excerpt(r.body));
    nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw remote_error(url + ": not a JSON object: " + detail::excerpt(r.body));
    return j;
  }

  remote_server connect(std::string url) const {
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
      throw config_error("remote_base: '" + url + "' is not an http:// or https:// URL");
    while (!url.empty() && url.back() == '/') url.pop_back();
    auto strip = [&](std::string_view tail) {
      if (url.size() < tail.size() || url.compare(url.size() - tail.size(), tail.size(), tail) != 0) return false;
      url.resize(url.size() - tail.size());
      return true;
    };
    remote_protocol protocol = remote_protocol::llama_cpp;
    if (strip("/v1/completions") || strip("/v1")) protocol = remote_protocol::openai;
    else strip("/completion");
    remote_server s{url, options_.protocol.value_or(protocol), options_.model, 0, 0, 0, -1};

    const nlohmann::json models = json_of(url + "/v1/models", exchange(url + "/v1/models"));
    if (models.contains("data") && models["data"].is_array() && !models["data"].empty()) {
      const auto& m = models["data"][0];
      if (s.model.empty() && m.contains("id") && m["id"].is_string()) s.model = m["id"].get<std::string>();
      if (m.contains("meta") && m["meta"].is_object()) {  // llama-server
        const auto& meta = m["meta"];
        if (meta.contains("n_vocab") && meta["n_vocab"].is_number_unsigned()) s.vocab = meta["n_vocab"];
      }
      if (m.contains("max_model_len") && m["max_model_len"].is_number_unsigned()) s.context = m["max_model_len"];
    }
    // llama-server only: its slots, the context of each, and its EOS (the token it is asked to pick)
    const http_response props = exchange(url + "/props");
    if (props.status == 200) {
      const nlohmann::json p = json_of(url + "/props", props);
      if (p.contains("total_slots") && p["total_slots"].is_number_unsigned()) s.slots = p["total_slots"];
      if (p.contains("default_generation_settings") && p["default_generation_settings"].contains("n_ctx") &&
          p["default_generation_settings"]["n_ctx"].is_number_unsigned())
        s.context = p["default_generation_settings"]["n_ctx"];
      if (s.slots > 0 && p.contains("eos_token") && p["eos_token"].is_string()) {
        const nlohmann::json req = {{"content", p["eos_token"]}, {"add_special", false}, {"parse_special", true}};
        const nlohmann::json t = json_of(url + "/tokenize", exchange(url + "/tokenize", req.dump()));
        if (t.contains("tokens") && t["tokens"].is_array() && t["tokens"].size() == 1 &&
            t["tokens"][0].is_number_integer())
          s.server_pick = t["tokens"][0].get<token_id>();
      }
    }
    if (s.slots > 0 && s.vocab == 0)
      throw remote_error(url + "/v1/models: llama-server did not report data[0].meta.n_vocab");
    return s;
  }

  // Compares the text of the server's tokens (llama-server's /detokenize, one id a request) with
  // the local table: all ids up to max_token_checks, else that many spread over the vocabulary.
  void check_token_table(const remote_server& s, const token_table& table) const {
    const std::size_t n = std::min(table.size(), s.vocab ? s.vocab : vocab_);
    const std::size_t count = std::min(n, options_.max_token_checks);
    std::vector<std::size_t> ids(count);
    for (std::size_t i = 0; i < count; ++i) ids[i] = count == n ? i : i * n / count;
    constexpr std::size_t per_batch = 64;
    for (std::size_t at = 0; at < count; at += per_batch) {
      std::vector<http_request> batch;
      const std::size_t end = std::min(count, at + per_batch);
      for (std::size_t i = at; i < end; ++i)
        batch.push_back({s.url + "/detokenize", nlohmann::json{{"tokens", {ids[i]}}}.dump()});
      const std::vector<http_response> replies = client_->run(std::move(batch));
      for (std::size_t i = at; i < end; ++i) {
        const std::string local = llama2c_tokenizer::piece_bytes(table[ids[i]]);  // as /detokenize shows it
        if (!detail::is_valid_utf8(local)) continue;  // the server shows a partial byte as U+FFFD
        const http_response& r = replies[i - at];
        if (!r.completed()) throw remote_error(s.url + "/detokenize: no answer (" + r.transport_error + ")");
        const nlohmann::json j = json_of(s.url + "/detokenize", r);
        if (!j.contains("content") || !j["content"].is_string())
          throw remote_error(s.url + "/detokenize: no \"content\" in " + detail::excerpt(r.body));
        const std::string served = j["content"].get<std::string>();
        if (served != local)
          throw config_error("the server's and the adapter's vocabularies differ at id " + std::to_string(ids[i]) +
                             ": " + s.url + " " + detail::quoted_token(served) + ", adapter's tokenizer " +
                             detail::quoted_token(local) + "; base and adapter must share a tokenizer");
      }
    }
  }

  remote_options options_;
  std::size_t vocab_ = 0, context_ = std::numeric_limits<int>::max();
  std::vector<remote_server> servers_;
  std::unique_ptr<http_batch_client> client_;
  mutable std::size_t requests_ = 0, rows_ = 0;
};

static_assert(SparsePolicy<remote_base>);

}  // namespace ipa
