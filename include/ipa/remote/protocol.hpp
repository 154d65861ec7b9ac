// SPDX-License-Identifier: MIT
// The two completion protocols a remote base speaks, as pure functions: the JSON body that asks
// for the top-k log-probs of the next token after a prompt of ids, and the checks that turn a
// reply into (ids, log-probs) or a clear error. No network here (see remote_base.hpp).
//
//   llama_cpp: llama.cpp's llama-server, native POST /completion
//              {"prompt":[ids], "n_predict":1, "n_probs":K, "cache_prompt":true, "id_slot":s}
//              -> completion_probabilities[0].top_logprobs[] = {id, logprob}
//              or, renormalised: + "post_sampling_probs":true, "samplers":["top_k"], "top_k":K
//              -> completion_probabilities[0].top_probs[] = {id, prob}
//   openai:    POST /v1/completions {"prompt":[ids], "max_tokens":1, "logprobs":K}, as vLLM
//              (return_tokens_as_token_ids) and llama-server's /v1 serve it
//              -> choices[0].logprobs.top_logprobs[0] = {"token_id:<id>": logprob}   (vLLM)
//              -> choices[0].logprobs.content[0].top_logprobs[] = {id, logprob}     (llama-server)
// Several prompts go as a list of id lists in one request (both servers queue them together);
// split_top_k_replies splits the answer back into one reply per prompt.
// The values are the raw softmax at temperature 1 in both servers: temperature, top-k/p and the
// fusion stay local. Renormalised (llama-server only), they are the same top K's probabilities
// divided by their sum: llama-server then ranks the top K with a partial sort, where the raw form
// sorts the whole vocabulary for every row and token on its main thread (bench_remote, 110M
// shape, 8 rows: 333 against 214 tok/s). Sources: ../shared/peers/REMOTE-PROTOCOLS.md
// (llama.cpp c392e509, vLLM main).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/types.hpp"
#include "ipa/remote/http.hpp"

namespace ipa {

/// Which API a server speaks.
enum class remote_protocol { llama_cpp, openai };

inline const char* to_string(remote_protocol p) noexcept {
  return p == remote_protocol::llama_cpp ? "llama.cpp /completion" : "OpenAI /v1/completions";
}

/// What a request asks beyond the prompt.
struct top_k_request {
  std::size_t k = 20;
  int slot = -1;              ///< llama-server's id_slot (the row's prompt cache); -1: the server picks
  token_id server_pick = -1;  ///< llama-server: make it sample this token (see below); -1: off
  /// llama-server: the top k's probabilities renormalised over themselves (see above; the server
  /// then samples its own token among them, and server_pick is not used)
  bool renormalized = false;
  std::string model;  ///< OpenAI's "model" field; empty: left out
};

namespace detail {
inline std::string top_k_request_body(remote_protocol protocol, nlohmann::json prompt, const top_k_request& r) {
  nlohmann::json j;
  j["prompt"] = std::move(prompt);
  if (protocol == remote_protocol::llama_cpp) {
    j["n_predict"] = 1;  // 0 still samples one token at this llama.cpp; say 1
    j["n_probs"] = r.k;
    j["cache_prompt"] = true;
    // Only what ipa reads: the server otherwise echoes the whole prompt's text every step.
    j["response_fields"] = {"completion_probabilities", "truncated", "index"};
  } else {
    j["max_tokens"] = 1;
    j["logprobs"] = r.k;
    j["temperature"] = 1.0;
    j["return_tokens_as_token_ids"] = true;  // vLLM: ids as keys, never colliding token strings
    if (!r.model.empty()) j["model"] = r.model;
  }
  if (r.slot >= 0) j["id_slot"] = r.slot;
  if (protocol == remote_protocol::llama_cpp && r.renormalized) {
    // the probabilities after a top_k sampler: its partial sort, then a softmax over the k
    j["post_sampling_probs"] = true;
    j["samplers"] = {"top_k"};
    j["top_k"] = r.k;
  } else if (r.server_pick >= 0) {
    // llama-server drops a token's probabilities when the token it sampled is a partial UTF-8
    // sequence; making it pick one complete token (EOS) avoids that. The probabilities ipa reads
    // are computed before sampling and do not change.
    j["samplers"] = {"top_k"};
    j["top_k"] = 1;
    j["logit_bias"] = nlohmann::json::array({nlohmann::json::array({r.server_pick, 1e9})});
  }
  return j.dump();
}
}  // namespace detail

/// The JSON body asking for the top-k log-probs after `prompt` (ids, sent as they are: the server
/// adds no BOS to an id prompt).
inline std::string top_k_request_body(remote_protocol protocol, std::span<const token_id> prompt,
                                      const top_k_request& r) {
  return detail::top_k_request_body(protocol, nlohmann::json(prompt), r);
}

/// The same for several prompts at once: `prompt` is a list of id lists, the multi-prompt form
/// of both protocols (one task per prompt, queued together; split the reply with
/// split_top_k_replies). llama-server applies an `id_slot` to every prompt of such a request,
/// which serialises them: leave r.slot at -1 and let the server match prompts to its caches.
inline std::string top_k_request_body(remote_protocol protocol, std::span<const std::span<const token_id>> prompts,
                                      const top_k_request& r) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& p : prompts) list.push_back(p);
  return detail::top_k_request_body(protocol, std::move(list), r);
}

/// A reply that cannot be used. `retryable` when asking again may help (llama-server's missing
/// probabilities after a partial UTF-8 pick).
struct bad_reply : remote_error {
  explicit bad_reply(const std::string& what, bool retry = false) : remote_error(what), retryable(retry) {}
  bool retryable;
};

namespace detail {

inline std::string excerpt(std::string_view body) {
  constexpr std::size_t n = 160;
  std::string out(body.substr(0, n));
  if (body.size() > n) out += "...";
  return out.empty() ? "(an empty body)" : "'" + out + "'";
}

// A log-prob as JSON gives it: a number <= 0. llama-server writes -FLT_MAX for p = 0.
inline float checked_log_prob(const nlohmann::json& v, const std::string& where) {
  if (!v.is_number()) throw bad_reply(where + " is " + (v.is_null() ? "null" : v.dump()) + ", expected a number");
  const double lp = v.get<double>();
  if (std::isnan(lp) || lp > 1e-4) throw bad_reply(where + " is " + v.dump() + ", expected a log-probability <= 0");
  if (lp < -1e30) return -std::numeric_limits<float>::infinity();
  return float(std::min(lp, 0.0));
}

inline token_id checked_id(const nlohmann::json& v, std::size_t vocab, const std::string& where) {
  if (!v.is_number_integer()) throw bad_reply(where + " is " + v.dump() + ", expected an integer token id");
  const long long id = v.get<long long>();
  if (id < 0 || std::size_t(id) >= vocab)
    throw bad_reply(where + " is " + std::to_string(id) + ", outside the vocabulary [0, " + std::to_string(vocab) +
                    ")");
  return token_id(id);
}

inline const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw bad_reply("the reply has no " + where + std::string(key));
  return j[key];
}

// A probability as JSON gives it (llama-server's post_sampling_probs), as a log-prob.
inline float checked_prob_as_log(const nlohmann::json& v, const std::string& where) {
  if (!v.is_number()) throw bad_reply(where + " is " + (v.is_null() ? "null" : v.dump()) + ", expected a number");
  const double p = v.get<double>();
  if (!(p >= 0.0 && p <= 1.0 + 1e-4)) throw bad_reply(where + " is " + v.dump() + ", expected a probability in [0, 1]");
  return p == 0.0 ? -std::numeric_limits<float>::infinity() : float(std::min(std::log(p), 0.0));
}

// llama-server's list of {id, logprob} under `where`top_logprobs (both of its endpoints), or of
// {id, prob} under `where`top_probs (post_sampling_probs).
inline void read_id_entries(const nlohmann::json& parent, const std::string& where, std::size_t vocab,
                            std::vector<std::pair<float, token_id>>& entries) {
  const bool probs = parent.is_object() && !parent.contains("top_logprobs") && parent.contains("top_probs");
  const std::string list = probs ? "top_probs" : "top_logprobs", value = probs ? "prob" : "logprob";
  const auto& top = field(parent, list.c_str(), where);
  if (!top.is_array()) throw bad_reply(where + list + " is not a list");
  for (std::size_t i = 0; i < top.size(); ++i) {
    const std::string at = list + "[" + std::to_string(i) + "]";
    const nlohmann::json& v = field(top[i], value.c_str(), at + ".");
    entries.emplace_back(probs ? checked_prob_as_log(v, at + ".prob") : checked_log_prob(v, at + ".logprob"),
                         checked_id(field(top[i], "id", at + "."), vocab, at + ".id"));
  }
}

}  // namespace detail

/// Parses one prompt's reply (parsed, or one part of split_top_k_replies) into the k most likely
/// (id, log-prob) pairs, sorted by descending log-prob. Throws bad_reply naming what was expected
/// and what was found.
inline void parse_top_k_part(remote_protocol protocol, const nlohmann::json& j, std::size_t k, std::size_t vocab,
                             std::span<token_id> ids, std::span<float> log_probs) {
  if (!j.is_object()) throw bad_reply("the reply is not a JSON object: " + detail::excerpt(j.dump()));
  std::vector<std::pair<float, token_id>> entries;
  if (protocol == remote_protocol::llama_cpp) {
    if (j.value("truncated", false))
      throw bad_reply("the server truncated the prompt (\"truncated\": true): it is longer than a slot's context");
    if (!j.contains("completion_probabilities"))
      throw bad_reply("the reply has no completion_probabilities: " + detail::excerpt(j.dump()), true);
    const auto& cp = j["completion_probabilities"];
    if (!cp.is_array() || cp.empty()) throw bad_reply("completion_probabilities is empty or not a list");
    detail::read_id_entries(cp[0], "completion_probabilities[0].", vocab, entries);
  } else {
    const auto& choices = detail::field(j, "choices", "");
    if (!choices.is_array() || choices.empty()) throw bad_reply("choices is empty or not a list");
    const auto& lp = detail::field(choices[0], "logprobs", "choices[0].");
    if (!lp.is_object()) throw bad_reply("choices[0].logprobs is " + lp.dump() + ", expected an object");
    if (lp.contains("content")) {  // llama-server's /v1: entries with ids
      const auto& content = lp["content"];
      if (!content.is_array() || content.empty()) throw bad_reply("choices[0].logprobs.content is empty");
      detail::read_id_entries(content[0], "choices[0].logprobs.content[0].", vocab, entries);
    } else {  // vLLM / OpenAI legacy: one {token: logprob} map per generated token
      const auto& tops = detail::field(lp, "top_logprobs", "choices[0].logprobs.");
      if (!tops.is_array() || tops.empty() || !tops[0].is_object())
        throw bad_reply("choices[0].logprobs.top_logprobs[0] is missing or not an object");
      for (const auto& [key, value] : tops[0].items()) {
        constexpr std::string_view prefix = "token_id:";
        if (key.rfind(prefix, 0) != 0)
          throw bad_reply("top_logprobs is keyed by token text ('" + key +
                          "'), expected 'token_id:<id>': start vLLM with --return-tokens-as-token-ids");
        const std::string digits = key.substr(prefix.size());
        if (digits.empty() || digits.size() > 10 || digits.find_first_not_of("0123456789") != std::string::npos)
          throw bad_reply("top_logprobs key '" + key + "' holds no token id");
        entries.emplace_back(detail::checked_log_prob(value, "top_logprobs['" + key + "']"),
                             detail::checked_id(nlohmann::json(std::stoll(digits)), vocab, "the id of '" + key + "'"));
      }
    }
  }
  // vLLM and OpenAI add the sampled token to the top-k: keep the k best
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (entries.size() < k)
    throw bad_reply("the reply holds " + std::to_string(entries.size()) + " top log-probs, expected " +
                    std::to_string(k) + " (the server's limit on log-probs may be lower: vLLM --max-logprobs)");
  for (std::size_t i = 0; i < k; ++i) {
    ids[i] = entries[i].second;
    log_probs[i] = entries[i].first;
    for (std::size_t before = 0; before < i; ++before)
      if (ids[before] == ids[i])
        throw bad_reply("token id " + std::to_string(ids[i]) + " appears twice in the top log-probs");
  }
}

/// The same from the body of a reply to a one-prompt request.
inline void parse_top_k_reply(remote_protocol protocol, std::string_view body, std::size_t k, std::size_t vocab,
                              std::span<token_id> ids, std::span<float> log_probs) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) throw bad_reply("the reply is not JSON: " + detail::excerpt(body));
  if (!j.is_object()) throw bad_reply("the reply is not a JSON object: " + detail::excerpt(body));
  parse_top_k_part(protocol, j, k, vocab, ids, log_probs);
}

/// Splits the reply to a request of n prompts (the list form of top_k_request_body) into one
/// reply per prompt, in prompt order, for parse_top_k_part. llama-server answers a list of n
/// replies, each with its prompt's "index" (a lone object for one prompt); vLLM and OpenAI one
/// object whose n choices carry their "index". Throws bad_reply when the parts do not add up.
inline std::vector<nlohmann::json> split_top_k_replies(remote_protocol protocol, std::string_view body, std::size_t n) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) throw bad_reply("the reply is not JSON: " + detail::excerpt(body));
  std::vector<nlohmann::json> parts;
  if (j.is_array()) {
    for (auto& part : j) parts.push_back(std::move(part));
  } else if (!j.is_object()) {
    throw bad_reply("the reply is neither a JSON object nor a list: " + detail::excerpt(body));
  } else if (protocol == remote_protocol::openai && j.contains("choices") && j["choices"].is_array() &&
             j["choices"].size() > 1) {
    for (auto& choice : j["choices"]) parts.push_back(nlohmann::json{{"choices", nlohmann::json::array({choice})}});
  } else {
    parts.push_back(std::move(j));
  }
  if (parts.size() != n)
    throw bad_reply("the reply holds " + std::to_string(parts.size()) + " answers for " + std::to_string(n) +
                    " prompts: " + detail::excerpt(body));
  // where each part says which prompt it answers, put it there
  auto index_of = [&](const nlohmann::json& part) -> const nlohmann::json* {
    if (!part.is_object()) return nullptr;
    if (part.contains("index")) return &part["index"];
    if (part.contains("choices") && part["choices"].is_array() && !part["choices"].empty() &&
        part["choices"][0].is_object() && part["choices"][0].contains("index"))
      return &part["choices"][0]["index"];
    return nullptr;
  };
  if (n > 1 && std::all_of(parts.begin(), parts.end(), index_of)) {
    std::vector<nlohmann::json> ordered(n);
    std::vector<bool> seen(n);
    for (auto& part : parts) {
      const nlohmann::json& i = *index_of(part);
      if (!i.is_number_unsigned() || i.get<std::size_t>() >= n || seen[i.get<std::size_t>()])
        throw bad_reply("an answer's index is " + i.dump() + ", expected each of 0.." + std::to_string(n - 1) +
                        " once");
      seen[i.get<std::size_t>()] = true;
      ordered[i.get<std::size_t>()] = std::move(part);
    }
    parts = std::move(ordered);
  }
  return parts;
}

}  // namespace ipa
