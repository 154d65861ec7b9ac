// SPDX-License-Identifier: MIT
// Adapters and training checkpoints on disk, crash-safe.
//
// An adapter is a folder: model.safetensors (F32 tensors "tok_embeddings", "layers.N.wq", ...,
// "norm", "output") + config.json (architecture, sizes, alpha, Quark's control token).
// A training run folder OUT holds checkpoint-NNNNNN/ folders (adapter/, optimizer.safetensors,
// trainer.json, pool.safetensors, reference.safetensors), a file `latest` naming the newest
// complete one, and `adapter`, a symlink to its adapter. A checkpoint is written into a
// temporary folder, fsync'ed, renamed into place, and only then does `latest` move (atomic
// rename): a crash at any moment leaves the previous checkpoint intact and loadable. No save
// ever deletes or overwrites the folder `latest` names (a repeated step gets checkpoint-N.1);
// older folders go only after the commit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/safetensors.hpp"
#include "ipa/model/llama_weights.hpp"
#include "ipa/train/trainer.hpp"
#include "ipa/version.hpp"

namespace ipa {

/// An adapter as saved: weights, its alpha, and the control token its prompts start with (-1: none).
struct saved_adapter {
  llama_weights weights;
  float alpha = 1.0f;
  token_id control_token = -1;
};

namespace detail {

// "layers.N.wq" for per-layer tensors, the slot's own name otherwise.
inline std::string stored_name(const tensor_slot& s, std::size_t layer) {
  const bool per_layer = s.name != "tok_embeddings" && s.name != "norm" && s.name != "output";
  return per_layer ? "layers." + std::to_string(layer) + "." + s.name : s.name;
}

inline void add_weights(safetensors_writer& w, const llama_weights& m, const std::string& prefix = "") {
  for (const tensor_slot& s : m.slots()) {
    const auto all = m.tensor(s.name);
    const bool is_2d = s.rows > 1;
    for (std::size_t l = 0; l < s.layers; ++l) {
      const std::string name = prefix + stored_name(s, l);
      std::vector<std::uint64_t> shape =
          is_2d ? std::vector<std::uint64_t>{s.rows, s.cols} : std::vector<std::uint64_t>{s.cols};
      w.add_f32(name, shape, all.subspan(l * s.rows * s.cols, s.rows * s.cols));
    }
  }
}

inline void read_weights(const safetensors_file& f, llama_weights& m, const std::string& prefix = "") {
  for (const tensor_slot& s : m.slots()) {
    auto all = m.tensor(s.name);
    for (std::size_t l = 0; l < s.layers; ++l) {
      const std::string name = prefix + stored_name(s, l);
      const auto v = f.floats(name, s.rows * s.cols);
      for (float x : v)
        if (!std::isfinite(x)) throw io_error("adapter tensor '" + name + "' holds a non-finite value");
      std::copy(v.begin(), v.end(), all.begin() + std::ptrdiff_t(l * s.rows * s.cols));
    }
  }
}

inline nlohmann::json config_json(const llama_config& c) {
  return {{"architecture", "llama"},        {"dim", c.dim},
          {"hidden_dim", c.hidden_dim},     {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},           {"n_kv_heads", c.n_kv_heads},
          {"vocab_size", c.vocab_size},     {"seq_len", c.seq_len},
          {"extra_tokens", c.extra_tokens}, {"norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},     {"shared_classifier", c.shared_classifier}};
}

inline llama_config config_from_json(const nlohmann::json& j, const std::string& where) {
  try {
    if (j.at("architecture").get<std::string>() != "llama")
      throw io_error(where + ": architecture '" + j.at("architecture").get<std::string>() + "' is not supported here");
    llama_config c;
    c.dim = j.at("dim").get<int>();
    c.hidden_dim = j.at("hidden_dim").get<int>();
    c.n_layers = j.at("n_layers").get<int>();
    c.n_heads = j.at("n_heads").get<int>();
    c.n_kv_heads = j.at("n_kv_heads").get<int>();
    c.vocab_size = j.at("vocab_size").get<int>();
    c.seq_len = j.at("seq_len").get<int>();
    c.extra_tokens = j.value("extra_tokens", 0);
    c.norm_eps = j.value("norm_eps", 1e-5f);
    c.rope_theta = j.value("rope_theta", 10000.0f);
    c.shared_classifier = j.at("shared_classifier").get<bool>();
    c.validate(where);
    return c;
  } catch (const nlohmann::json::exception& e) {
    throw io_error(where + ": missing or mistyped field: " + e.what());
  } catch (const config_error& e) {
    throw io_error(e.what());
  }
}

inline nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw io_error(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace detail

/// Writes an adapter folder (model.safetensors + config.json), each file atomically.
inline void save_adapter(const std::string& dir, const llama_weights& w, float alpha, token_id control_token) {
  std::filesystem::create_directories(dir);
  safetensors_writer st;
  detail::add_weights(st, w);
  st.metadata("format", "ipa-adapter");
  st.save(dir + "/model.safetensors");
  nlohmann::json cfg = detail::config_json(w.config());
  cfg["alpha"] = alpha;
  cfg["control_token"] = control_token;
  cfg["ipa_version"] = IPA_VERSION_STRING;
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
}

/// Reads an adapter folder; every size is checked, a corrupt file is an io_error.
inline saved_adapter load_adapter(const std::string& dir) {
  const nlohmann::json cfg = detail::read_json(dir + "/config.json");
  saved_adapter a;
  const llama_config c = detail::config_from_json(cfg, dir + "/config.json");
  const auto st = safetensors_file::load(dir + "/model.safetensors");
  std::uint64_t held = 0;
  for (const auto& [name, e] : st.tensors()) held += e.elements();
  if (c.parameter_count() != held)  // before allocating what the config claims
    throw io_error(dir + "/config.json describes " + std::to_string(c.parameter_count()) +
                   " parameters, model.safetensors holds " + std::to_string(held));
  a.weights = llama_weights(c);
  detail::read_weights(st, a.weights);
  a.alpha = cfg.value("alpha", 1.0f);
  a.control_token = cfg.value("control_token", -1);
  if (!std::isfinite(a.alpha)) throw io_error(dir + "/config.json: alpha is not finite");
  if (a.control_token >= a.weights.config().input_vocab())
    throw io_error(dir + "/config.json: control_token " + std::to_string(a.control_token) +
                   " is outside the adapter's " + std::to_string(a.weights.config().input_vocab()) + " input ids");
  return a;
}

namespace detail {
/// OUT/adapter -> NAME/adapter (a symlink swapped by rename: atomic).
inline void point_adapter_link(const std::string& out_dir, const std::string& name) {
  namespace fs = std::filesystem;
  const std::string link_tmp = out_dir + "/.adapter-link";
  fs::remove(link_tmp);
  fs::create_directory_symlink(name + "/adapter", link_tmp);
  fs::rename(link_tmp, out_dir + "/adapter");
}

/// A count or index of trainer.json (`what` names it): a JSON integer in [0, max]. Negative,
/// fractional or huge values are corrupt (and converting a float beyond the integer's range
/// would be undefined behaviour).
inline std::uint64_t stored_whole(const nlohmann::json& v, const std::string& what, std::uint64_t max) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > max)
    throw io_error(what + " must be a whole number in [0, " + std::to_string(max) + "], found " + v.dump());
  return v.get<std::uint64_t>();
}
inline std::uint64_t stored_count(const nlohmann::json& s, const char* key, const std::string& file,
                                  std::uint64_t max = std::uint64_t(1) << 53) {
  return stored_whole(s.at(key), file + ": " + key, max);
}
/// An array of them.
inline std::vector<std::uint64_t> stored_counts(const nlohmann::json& s, const char* key, const std::string& file,
                                                std::uint64_t max) {
  const nlohmann::json& v = s.at(key);
  if (!v.is_array()) throw io_error(file + ": " + key + " must be an array of whole numbers, found " + v.dump());
  std::vector<std::uint64_t> out;
  out.reserve(v.size());
  for (const nlohmann::json& x : v) out.push_back(stored_whole(x, file + ": an element of " + key, max));
  return out;
}
}  // namespace detail

/// Saves everything a run needs to continue exactly: adapter, optimizer moments, value head,
/// RNG, baseline, KL coefficient, data order, Quark pool, PPO reference; `run` is the caller's
/// description of the run (its options), stored in trainer.json. Returns the checkpoint folder.
template <class R, class Tok, BasePolicy Base>
std::string save_checkpoint(const std::string& out_dir, rl_trainer<R, Tok, Base>& t, const nlohmann::json& run = {}) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir);
  char step_name[32];
  std::snprintf(step_name, sizeof step_name, "checkpoint-%06zu", t.steps_done());
  // Never replace an existing folder: `latest` may name it (a second save at the same step, or
  // a run resumed from an older step), and deleting it first would leave `latest` dangling if
  // the process died before the new commit. A taken name gets a suffix: checkpoint-N.1, ...
  std::string name = step_name;
  for (int k = 1; fs::exists(out_dir + "/" + name); ++k) name = std::string(step_name) + "." + std::to_string(k);
  const std::string final_dir = out_dir + "/" + name, tmp_dir = out_dir + "/.tmp-" + name;
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);

  save_adapter(tmp_dir + "/adapter", t.policy().to_weights(), t.config().alpha, t.best_control_token());
  safetensors_writer opt;
  opt.add_f32("adam.m", {t.optimizer().first_moment().size()}, t.optimizer().first_moment());
  opt.add_f32("adam.v", {t.optimizer().second_moment().size()}, t.optimizer().second_moment());
  opt.add_f32("value_head", {t.value_head().size()}, t.value_head());
  opt.add_f32("value_adam.m", {t.value_optimizer().first_moment().size()}, t.value_optimizer().first_moment());
  opt.add_f32("value_adam.v", {t.value_optimizer().second_moment().size()}, t.value_optimizer().second_moment());
  opt.save(tmp_dir + "/optimizer.safetensors");
  if (t.config().algorithm == rl_algorithm::ppo) {
    safetensors_writer ref;
    const auto p = t.reference().parameters();
    ref.add_f32("parameters", {p.size()}, p);
    ref.save(tmp_dir + "/reference.safetensors");
  }
  // Quark's pool: flat token arrays with per-entry lengths, bf16 base logits (a sparse base:
  // top-k ids and log-probs, K in base_top_k), rewards
  const quark_pool& pool = t.pool();
  {
    std::vector<std::int32_t> lens, tokens, top_k_ids, top_k{0};
    std::vector<std::uint16_t> logits;
    std::vector<float> top_k_lps;
    std::vector<double> rewards;
    for (const auto& e : pool.entries) {
      if (!e.base_top_k_ids.empty()) top_k[0] = std::int32_t(e.base_top_k_ids.size() / e.response.size());
      top_k_ids.insert(top_k_ids.end(), e.base_top_k_ids.begin(), e.base_top_k_ids.end());
      top_k_lps.insert(top_k_lps.end(), e.base_top_k_log_probs.begin(), e.base_top_k_log_probs.end());
      lens.push_back(std::int32_t(e.prompt.size()));
      lens.push_back(std::int32_t(e.response.size()));
      tokens.insert(tokens.end(), e.prompt.begin(), e.prompt.end());
      tokens.insert(tokens.end(), e.response.begin(), e.response.end());
      logits.insert(logits.end(), e.base_logits.begin(), e.base_logits.end());
      rewards.push_back(e.reward);
    }
    safetensors_writer ps;
    ps.add<std::int32_t>("lengths", "I32", {lens.size()}, lens);
    ps.add<std::int32_t>("tokens", "I32", {tokens.size()}, tokens);
    ps.add<std::uint16_t>("base_logits", "BF16", {logits.size()}, logits);
    ps.add<double>("rewards", "F64", {rewards.size()}, rewards);
    ps.add<std::int32_t>("base_top_k", "I32", {1}, top_k);
    ps.add<std::int32_t>("base_top_k_ids", "I32", {top_k_ids.size()}, top_k_ids);
    ps.add_f32("base_top_k_log_probs", {top_k_lps.size()}, top_k_lps);
    ps.save(tmp_dir + "/pool.safetensors");
  }
  nlohmann::json state;
  state["ipa_version"] = IPA_VERSION_STRING;
  state["step"] = t.steps_done();
  state["rng"] = std::vector<std::uint64_t>(t.rng().state(), t.rng().state() + 4);
  state["adam_steps"] = t.optimizer().steps_taken();
  state["value_adam_steps"] = t.value_optimizer().steps_taken();
  state["baseline"] = {{"value", t.baseline().value}, {"has_value", t.baseline().has_value}};
  state["kl_coef"] = t.kl().coef;
  state["prompt_order"] = t.prompt_order();
  state["prompt_cursor"] = t.prompt_cursor();
  state["run"] = run;
  write_file_atomic(tmp_dir + "/trainer.json", state.dump(1) + "\n");
  detail::fsync_path(tmp_dir, true);

  fs::rename(tmp_dir, final_dir);
  detail::fsync_path(out_dir, true);
  write_file_atomic(out_dir + "/latest", name + "\n");  // the commit point
  detail::point_adapter_link(out_dir, name);
  // older checkpoints are no longer needed
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string n = entry.path().filename().string();
    if ((n.rfind("checkpoint-", 0) == 0 && n != name) || n.rfind(".tmp-checkpoint-", 0) == 0)
      fs::remove_all(entry.path());  // (and the leftovers of writes that died)
  }
  return final_dir;
}

/// The newest complete checkpoint folder of a run ("" when there is none).
inline std::string latest_checkpoint(const std::string& out_dir) {
  const std::string latest = out_dir + "/latest";
  if (!std::filesystem::exists(latest)) return {};
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.rfind("checkpoint-", 0) != 0 || name.find('/') != std::string::npos)
    throw io_error(latest + ": corrupt: expected a checkpoint name, found '" + name + "'");
  return out_dir + "/" + name;
}

/// Removes what saves that died left in a run's folder: temporary files and folders (".tmp-"),
/// and checkpoint folders that `latest` does not name. `latest` is the commit point: a save
/// killed after renaming its folder into place but before `latest` moved is not part of the run,
/// which continues from `latest` (and would otherwise save its next step beside the stale one).
/// Call it holding the folder's dir_lock.
inline void remove_uncommitted(const std::string& out_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(out_dir)) return;
  const std::string latest = latest_checkpoint(out_dir);
  const std::string keep = latest.empty() ? std::string() : fs::path(latest).filename().string();
  if (!keep.empty() && !fs::is_directory(latest))
    throw io_error(out_dir + "/latest names " + keep + ", which is missing: the run's folder was damaged");
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string n = entry.path().filename().string();
    if (n.find(".tmp-") != std::string::npos || n == ".adapter-link" || (n.rfind("checkpoint-", 0) == 0 && n != keep))
      fs::remove_all(entry.path());
  }
  if (!keep.empty()) detail::point_adapter_link(out_dir, keep);
}

/// The run description stored with a checkpoint.
inline nlohmann::json checkpoint_run(const std::string& checkpoint_dir) {
  return detail::read_json(checkpoint_dir + "/trainer.json").value("run", nlohmann::json::object());
}

/// Restores a trainer (built with the same configuration) from a checkpoint folder.
template <class R, class Tok, BasePolicy Base>
void load_checkpoint(const std::string& dir, rl_trainer<R, Tok, Base>& t) {
  const nlohmann::json s = detail::read_json(dir + "/trainer.json");
  const saved_adapter a = load_adapter(dir + "/adapter");
  auto params = t.policy().parameters();
  if (a.weights.config().parameter_count() != params.size() || a.weights.data().size() != params.size())
    throw io_error(dir + "/adapter: " + std::to_string(a.weights.data().size()) +
                   " parameters, the trainer's adapter has " + std::to_string(params.size()) +
                   "; resume with the options of the original run");
  std::copy(a.weights.data().begin(), a.weights.data().end(), params.begin());
  const auto opt = safetensors_file::load(dir + "/optimizer.safetensors");
  auto put = [&](const char* name, std::span<float> dst) {
    const auto v = opt.floats(name, dst.size());
    std::copy(v.begin(), v.end(), dst.begin());
  };
  put("adam.m", t.optimizer().first_moment());
  put("adam.v", t.optimizer().second_moment());
  put("value_head", t.value_head());
  put("value_adam.m", t.value_optimizer().first_moment());
  put("value_adam.v", t.value_optimizer().second_moment());
  if (t.config().algorithm == rl_algorithm::ppo) {
    const auto ref = safetensors_file::load(dir + "/reference.safetensors").floats("parameters", params.size());
    std::copy(ref.begin(), ref.end(), t.reference().parameters().begin());
  }
  const auto ps = safetensors_file::load(dir + "/pool.safetensors");
  const auto lens = ps.raw<std::int32_t>("lengths", "I32", any_size);
  const auto tokens = ps.raw<std::int32_t>("tokens", "I32", any_size);
  const auto logits = ps.raw<std::uint16_t>("base_logits", "BF16", any_size);
  const auto rewards = ps.raw<double>("rewards", "F64", any_size);
  // a sparse base's pool holds K per position instead of V (checkpoints before 0.x hold no K: dense)
  const std::size_t K =
      ps.contains("base_top_k") ? std::size_t(std::max(0, ps.raw<std::int32_t>("base_top_k", "I32", 1)[0])) : 0;
  const auto top_k_ids = K ? ps.raw<std::int32_t>("base_top_k_ids", "I32", any_size) : std::vector<std::int32_t>();
  const auto top_k_lps = K ? ps.raw<float>("base_top_k_log_probs", "F32", any_size) : std::vector<float>();
  if (top_k_ids.size() != top_k_lps.size())
    throw io_error(dir + "/pool.safetensors: " + std::to_string(top_k_ids.size()) + " top-k ids but " +
                   std::to_string(top_k_lps.size()) + " log-probs");
  const std::size_t V = K ? 0 : std::size_t(t.policy().config().vocab_size);
  if (lens.size() != 2 * rewards.size()) throw io_error(dir + "/pool.safetensors: lengths and rewards disagree");
  t.pool().entries.clear();
  std::size_t at = 0, lat = 0, lat_k = 0;
  for (std::size_t i = 0; i < rewards.size(); ++i) {
    if (lens[2 * i] < 1 || lens[2 * i + 1] < 1 ||
        at + std::size_t(lens[2 * i]) + std::size_t(lens[2 * i + 1]) > tokens.size() ||
        lat + std::size_t(lens[2 * i + 1]) * V > logits.size() ||
        lat_k + std::size_t(lens[2 * i + 1]) * K > top_k_ids.size())
      throw io_error(dir + "/pool.safetensors: entry " + std::to_string(i) + " runs past the stored arrays");
    quark_pool::entry e;
    e.prompt.assign(tokens.begin() + std::ptrdiff_t(at),
                    tokens.begin() + std::ptrdiff_t(at + std::size_t(lens[2 * i])));
    at += std::size_t(lens[2 * i]);
    e.response.assign(tokens.begin() + std::ptrdiff_t(at),
                      tokens.begin() + std::ptrdiff_t(at + std::size_t(lens[2 * i + 1])));
    at += std::size_t(lens[2 * i + 1]);
    e.base_logits.assign(logits.begin() + std::ptrdiff_t(lat),
                         logits.begin() + std::ptrdiff_t(lat + e.response.size() * V));
    lat += e.response.size() * V;
    e.base_top_k_ids.assign(top_k_ids.begin() + std::ptrdiff_t(lat_k),
                            top_k_ids.begin() + std::ptrdiff_t(lat_k + e.response.size() * K));
    e.base_top_k_log_probs.assign(top_k_lps.begin() + std::ptrdiff_t(lat_k),
                                  top_k_lps.begin() + std::ptrdiff_t(lat_k + e.response.size() * K));
    lat_k += e.response.size() * K;
    e.reward = rewards[i];
    t.pool().entries.push_back(std::move(e));
  }
  try {
    const std::string file = dir + "/trainer.json";
    const auto rng = detail::stored_counts(s, "rng", file, ~std::uint64_t(0));
    if (rng.size() != 4) throw io_error(file + ": rng must hold 4 numbers");
    const std::uint64_t st[4] = {rng[0], rng[1], rng[2], rng[3]};
    t.rng().set_state(st);
    t.optimizer().set_steps_taken(detail::stored_count(s, "adam_steps", file));
    t.value_optimizer().set_steps_taken(detail::stored_count(s, "value_adam_steps", file));
    t.baseline().value = s.at("baseline").at("value").get<double>();
    t.baseline().has_value = s.at("baseline").at("has_value").get<bool>();
    t.kl().coef = s.at("kl_coef").get<double>();
    if (!std::isfinite(t.baseline().value) || !std::isfinite(t.kl().coef) || t.kl().coef < 0)
      throw io_error(file + ": baseline.value and kl_coef must be finite (kl_coef >= 0)");
    const auto stored_order = detail::stored_counts(s, "prompt_order", file, t.prompt_order().size());
    const std::vector<std::size_t> order(stored_order.begin(), stored_order.end());
    if (order.size() != t.prompt_order().size())
      throw io_error(dir + "/trainer.json: the run had " + std::to_string(order.size()) + " prompts, this one has " +
                     std::to_string(t.prompt_order().size()) + "; resume with the same prompts file");
    for (std::size_t i : order)
      if (i >= order.size()) throw io_error(dir + "/trainer.json: prompt_order holds an index out of range");
    t.prompt_order() = order;
    t.prompt_cursor() = std::size_t(detail::stored_count(s, "prompt_cursor", file)) % order.size();
    t.step_count() = std::size_t(detail::stored_count(s, "step", file));
    // (older checkpoints also hold quark_best_bin, unused now: Quark always samples with bin 0)
  } catch (const nlohmann::json::exception& e) {
    throw io_error(dir + "/trainer.json: missing or mistyped field: " + e.what());
  }
  t.state_restored();
}

}  // namespace ipa
