// SPDX-License-Identifier: MIT
// A Hugging Face model folder: config.json + model.safetensors, or shards listed by
// model.safetensors.index.json. Shared by the Llama and GPT-2 readers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/compact_matrix.hpp"
#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/io/safetensors.hpp"

namespace ipa {

namespace detail {
/// A config's `key`: a whole number in [lo, hi], or `fallback` when absent (none: required).
inline long long config_whole(const nlohmann::json& config, const std::string& key, std::optional<long long> fallback,
                              long long lo, long long hi, const std::string& where) {
  const std::string range = "a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    if (!fallback) throw io_error(where + ": missing field '" + key + "' (" + range + ")");
    return *fallback;
  }
  if (!it->is_number_integer() || it->get<long long>() < lo || it->get<long long>() > hi)
    throw io_error(where + ": '" + key + "' must be " + range + ", found " + it->dump());
  return it->get<long long>();
}
}  // namespace detail

/// The config and tensors of a Hugging Face folder. The config is read on construction; every
/// shard is parsed (and validated) on the first question about tensors, so a reader checks
/// the config first and compares it with what the files hold before it allocates the model.
class hf_folder {
 public:
  explicit hf_folder(std::string dir) : dir_(std::move(dir)) {
    try {
      config_ = nlohmann::json::parse(read_file(dir_ + "/config.json"));
    } catch (const nlohmann::json::exception& e) {
      throw io_error(dir_ + "/config.json: not valid JSON: " + e.what());
    }
    if (!config_.is_object()) throw io_error(dir_ + "/config.json: not a JSON object");
  }

  const std::string& dir() const noexcept { return dir_; }
  const nlohmann::json& config() const noexcept { return config_; }
  /// Values stored in all shards together.
  std::uint64_t held_values() const {
    open();
    return held_;
  }

  bool contains(const std::string& name) const {
    open();
    for (const auto& [file, f] : files_)
      if (f->contains(name)) return true;
    return false;
  }
  const safetensors_entry& entry(const std::string& name) const { return file_of(name).entry(name); }

  /// A float tensor of exactly `shape`, every value finite.
  std::vector<float> floats(const std::string& name, const std::vector<std::uint64_t>& shape) const {
    const safetensors_file& f = file_of(name);
    const safetensors_entry& e = f.entry(name);
    std::uint64_t n = 1;
    for (auto s : shape) n *= s;
    // a vector stored as (1, n) or a matrix with the expected shape; anything else is a mix-up
    if (e.shape != shape && !(shape.size() == 1 && e.elements() == n))
      throw io_error(where(name) + ": tensor '" + name + "' has shape " + detail::shape_text(e.shape) + ", expected " +
                     detail::shape_text(shape));
    auto v = f.floats(name, n);
    for (float x : v)
      if (!std::isfinite(x)) throw io_error(where(name) + ": tensor '" + name + "' holds a non-finite value");
    return v;
  }

  /// An F32, F16 or BF16 tensor of exactly `shape` (a matrix, or a vector as rows 1), read where
  /// it lies (its values unread: detail::require_finite checks them); valid while storage() lives.
  compact_matrix compact(const std::string& name, std::uint64_t rows, std::uint64_t cols) const {
    return file_of(name).compact(name, rows, cols);
  }
  /// The file that holds tensor `name`, for messages.
  std::string where(const std::string& name) const {
    auto it = where_.find(name);
    return dir_ + "/" + (it == where_.end() ? std::string("model.safetensors") : it->second);
  }
  /// What keeps the shards' bytes alive (their mappings).
  std::vector<std::shared_ptr<const void>> storage() const {
    open();
    std::vector<std::shared_ptr<const void>> all;
    for (const auto& [file, f] : files_) all.push_back(f->storage());
    return all;
  }

  /// "config.json: what" as an io_error.
  [[noreturn]] void config_fail(const std::string& what) const { throw io_error(dir_ + "/config.json: " + what); }

  /// config.json's `key`: a whole number in [lo, hi], or `fallback` when the key is absent
  /// (no fallback: required). 64.5, "64" or 2^40 are errors naming the key and the value.
  long long whole(const std::string& key, std::optional<long long> fallback, long long lo, long long hi) const {
    return detail::config_whole(config_, key, fallback, lo, hi, dir_ + "/config.json");
  }
  /// config.json's `key`: a finite number in (lo, hi], or `fallback` when absent.
  double number(const std::string& key, double fallback, double lo, double hi) const {
    const auto it = config_.find(key);
    if (it == config_.end() || it->is_null()) return fallback;
    if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() <= lo || it->get<double>() > hi)
      config_fail("'" + key + "' must be a number in (" + std::to_string(lo) + ", " + std::to_string(hi) + "], found " +
                  it->dump());
    return it->get<double>();
  }
  /// config.json's `key`: true or false, or `fallback` when absent.
  bool flag(const std::string& key, bool fallback) const {
    const auto it = config_.find(key);
    if (it == config_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) config_fail("'" + key + "' must be true or false, found " + it->dump());
    return it->get<bool>();
  }
  /// Refuses a setting ipa does not implement: `key` present (and not null) with a value other
  /// than `supported`. Ignoring it would decode a different model without a word.
  void only(const std::string& key, const nlohmann::json& supported, const std::string& what) const {
    const auto it = config_.find(key);
    if (it == config_.end() || it->is_null() || *it == supported) return;
    config_fail("'" + key + "' is " + it->dump() + ": " + what + " is not implemented (supported: " + supported.dump() +
                ")");
  }

 private:
  void open() const {
    if (opened_) return;
    const std::string index = dir_ + "/model.safetensors.index.json";
    std::vector<std::string> shards = {"model.safetensors"};
    if (std::filesystem::exists(index)) {
      shards.clear();
      try {
        const auto j = nlohmann::json::parse(read_file(index));
        for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
          const std::string file = it->get<std::string>();
          if (file.empty() || file.find('/') != std::string::npos || file.find("..") != std::string::npos)
            throw io_error(index + ": shard name '" + file + "' must be a plain file name in the folder");
          where_[it.key()] = file;
          if (std::find(shards.begin(), shards.end(), file) == shards.end()) shards.push_back(file);
        }
      } catch (const nlohmann::json::exception& e) {
        throw io_error(index + ": not a safetensors index: " + e.what());
      }
    }
    for (const auto& file : shards) {
      files_[file] = std::make_shared<safetensors_file>(safetensors_file::load(dir_ + "/" + file));
      for (const auto& [name, e] : files_[file]->tensors()) held_ += e.elements();
    }
    opened_ = true;
  }
  const safetensors_file& file_of(const std::string& name) const {
    open();
    auto it = where_.find(name);
    if (it != where_.end()) return *files_.at(it->second);
    for (const auto& [file, f] : files_)
      if (f->contains(name)) return *f;
    throw io_error(dir_ + ": no safetensors file holds tensor '" + name + "'");
  }

  std::string dir_;
  nlohmann::json config_;
  // the shards, parsed on first use
  mutable bool opened_ = false;
  mutable std::map<std::string, std::string> where_;
  mutable std::map<std::string, std::shared_ptr<safetensors_file>> files_;
  mutable std::uint64_t held_ = 0;
};

}  // namespace ipa
