// SPDX-License-Identifier: MIT
// A model whose architecture is chosen at run time (a command line loading whatever file it is
// given): a Policy over a variant of the concrete models. Library code composes the concrete
// types at compile time; this is the type erasure at the edge.
#pragma once
#include <cstddef>
#include <span>
#include <variant>

#include "ipa/core/types.hpp"
#include "ipa/model/gpt2.hpp"
#include "ipa/model/llama.hpp"

namespace ipa {

/// A Llama or GPT-2 model behind one Policy interface.
class any_model {
 public:
  using state_type = std::variant<llama_state, gpt2_state>;

  any_model(llama_model m) : m_(std::move(m)) {}  // NOLINT: implicit on purpose
  any_model(gpt2_model m) : m_(std::move(m)) {}   // NOLINT

  /// "llama" or "gpt2".
  const char* architecture() const noexcept { return m_.index() == 0 ? "llama" : "gpt2"; }
  const llama_model* llama() const noexcept { return std::get_if<llama_model>(&m_); }
  const gpt2_model* gpt2() const noexcept { return std::get_if<gpt2_model>(&m_); }

  std::size_t vocab_size() const noexcept {
    return std::visit([](const auto& m) { return m.vocab_size(); }, m_);
  }
  std::size_t context_length() const noexcept {
    return std::visit([](const auto& m) { return m.context_length(); }, m_);
  }
  /// What the KV caches of states made from now on store (f16: llama.cpp's default).
  void set_kv_cache_type(kv_cache_type type) noexcept {
    std::visit([&](auto& m) { m.set_kv_cache_type(type); }, m_);
  }
  state_type new_state(int batch, int capacity = 0) const {
    return std::visit([&](const auto& m) { return state_type(m.new_state(batch, capacity)); }, m_);
  }
  template <class Prompts>
  void prefill(state_type& s, const Prompts& prompts, std::span<float> logits) const {
    std::visit([&](const auto& m) { m.prefill(state_of(m, s), prompts, logits); }, m_);
  }
  void step(state_type& s, std::span<const int> rows, std::span<const token_id> tokens, std::span<float> logits) const {
    std::visit([&](const auto& m) { m.step(state_of(m, s), rows, tokens, logits); }, m_);
  }

 private:
  // a state made by new_state() always holds the alternative of the model that made it
  template <class M>
  static typename M::state_type& state_of(const M&, state_type& s) {
    return std::get<typename M::state_type>(s);
  }

  std::variant<llama_model, gpt2_model> m_;
};

}  // namespace ipa
