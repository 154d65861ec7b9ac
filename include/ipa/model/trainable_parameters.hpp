// SPDX-License-Identifier: MIT
// What every trainable model shares: its parameters and their gradients as two flat vectors laid
// out by named tensor slots (the layout of its weights class), lookups by name, and the checks
// of a forward pass's token batch. trainable_llama and trainable_gpt2 add forward and backward.
#pragma once
#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/model/flat_weights.hpp"

namespace ipa::detail {

/// Flat parameters and gradients (scalar T: float to train, double to check gradients) over
/// named tensor slots. A base of the trainable models: the public half is their parameter
/// interface (what an optimizer and a checkpoint see), the protected half their lookups.
template <class T>
class trainable_parameters {
 public:
  const std::vector<tensor_slot>& slots() const noexcept { return slots_; }
  std::span<T> parameters() noexcept { return params_; }
  std::span<const T> parameters() const noexcept { return params_; }
  std::span<T> gradients() noexcept { return grads_; }
  std::span<const T> gradients() const noexcept { return grads_; }
  void zero_grad() noexcept { std::fill(grads_.begin(), grads_.end(), T(0)); }

  /// The gradient of one named tensor (all layers), in the layout of the model's weights.
  std::span<const T> gradient(std::string_view name) const {
    const tensor_slot& s = slot(name);
    return {grads_.data() + s.offset, s.size()};
  }

 protected:
  /// `who` names the model in error messages.
  trainable_parameters(const char* who, std::vector<tensor_slot> slots, std::span<const float> data)
      : who_(who), slots_(std::move(slots)), params_(data.begin(), data.end()), grads_(data.size(), T(0)) {}

  const tensor_slot& slot(std::string_view name) const {
    for (const tensor_slot& s : slots_)
      if (s.name == name) return s;
    throw config_error(std::string(who_) + ": no tensor named '" + std::string(name) + "'");
  }
  const T* tensor(std::string_view name) const { return params_.data() + slot(name).offset; }
  T* grad(std::string_view name) { return grads_.data() + slot(name).offset; }
  /// Layer l of a stacked tensor, and its gradient.
  const T* layer(std::string_view name, std::size_t l) const {
    const tensor_slot& s = slot(name);
    return params_.data() + s.offset + l * s.rows * s.cols;
  }
  T* layer_grad(std::string_view name, std::size_t l) {
    const tensor_slot& s = slot(name);
    return grads_.data() + s.offset + l * s.rows * s.cols;
  }

  /// Throws shape_error unless `tokens` is a non-empty batch x steps block whose sequences fit
  /// the context and whose ids are in [0, vocab).
  void check_batch(std::span<const token_id> tokens, std::size_t batch, std::size_t steps, int context,
                   int vocab) const {
    const std::string where = std::string(who_) + "::forward: ";
    if (tokens.size() != batch * steps || tokens.empty())
      throw shape_error(where + std::to_string(tokens.size()) + " tokens for a batch of " + std::to_string(batch) +
                        " x " + std::to_string(steps) + " (need at least one)");
    if (steps > std::size_t(context))
      throw shape_error(where + "sequences of " + std::to_string(steps) + " tokens exceed the context length " +
                        std::to_string(context));
    for (token_id t : tokens)
      if (t < 0 || t >= vocab)
        throw shape_error(where + "token id " + std::to_string(t) + " outside [0, " + std::to_string(vocab) + ")");
  }

  const char* who_;
  std::vector<tensor_slot> slots_;
  std::vector<T> params_, grads_;
};

}  // namespace ipa::detail
