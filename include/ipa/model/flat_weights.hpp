// SPDX-License-Identifier: MIT
// A model's weights as one contiguous float buffer laid out by named tensor slots: the part
// llama_weights and gpt2_weights share (each adds its architecture's layout and initialisers).
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ipa/core/error.hpp"

namespace ipa {

/// Offsets of one tensor inside a weights buffer, with its shape (row-major, out x in).
struct tensor_slot {
  std::string name;
  std::size_t offset = 0;
  std::size_t rows = 0, cols = 0;  ///< per layer for stacked tensors
  std::size_t layers = 1;
  std::size_t size() const noexcept { return layers * rows * cols; }
};

namespace detail {

/// One float buffer for all tensors of a model with hyper-parameters Config, in the order of
/// its slots. A base of llama_weights and gpt2_weights.
template <class Config>
class flat_weights {
 public:
  const Config& config() const noexcept { return config_; }
  std::span<float> data() noexcept { return data_; }
  std::span<const float> data() const noexcept { return data_; }
  const std::vector<tensor_slot>& slots() const noexcept { return slots_; }

  /// The slot of the tensor called `name`; throws config_error for an unknown name.
  const tensor_slot& slot(std::string_view name) const {
    for (const auto& s : slots_)
      if (s.name == name) return s;
    throw config_error(std::string(who_) + ": no tensor named '" + std::string(name) + "'");
  }
  /// The whole (all layers) tensor called `name`.
  std::span<float> tensor(std::string_view name) {
    const tensor_slot& s = slot(name);
    return {data_.data() + s.offset, s.size()};
  }
  std::span<const float> tensor(std::string_view name) const {
    const tensor_slot& s = slot(name);
    return {data_.data() + s.offset, s.size()};
  }
  /// Layer l's slice of a stacked tensor.
  const float* layer(std::string_view name, int l) const {
    const tensor_slot& s = slot(name);
    return data_.data() + s.offset + std::size_t(l) * s.rows * s.cols;
  }

 protected:
  flat_weights() = default;
  /// Zeros in `slots`' layout. `who` names the class in error messages.
  flat_weights(const char* who, const Config& config, std::vector<tensor_slot> slots)
      : who_(who), config_(config), slots_(std::move(slots)) {
    data_.assign(slots_.empty() ? 0 : slots_.back().offset + slots_.back().size(), 0.0f);
  }
  /// Takes `data` in `slots`' order; throws shape_error when its size differs.
  flat_weights(const char* who, const Config& config, std::vector<tensor_slot> slots, std::vector<float> data)
      : flat_weights(who, config, std::move(slots)) {
    if (data.size() != data_.size())
      throw shape_error(std::string(who_) + ": " + std::to_string(data.size()) + " values for a model of " +
                        std::to_string(data_.size()) + " parameters");
    data_ = std::move(data);
  }

  const char* who_ = "weights";
  Config config_;
  std::vector<tensor_slot> slots_;
  std::vector<float> data_;
};

}  // namespace detail
}  // namespace ipa
