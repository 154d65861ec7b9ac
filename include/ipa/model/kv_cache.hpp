// SPDX-License-Identifier: MIT
// The part of a decoding state every architecture shares: per-layer KV caches (L, B, kv heads,
// S, head size), each row's length, and the checks that place fed tokens at their rows' next
// positions.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/bf16.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// What a KV cache stores per element: f32, or IEEE half (llama.cpp's default cache type, `-ctk
/// f16 -ctv f16`): half the memory and half the bytes attention reads, each key and value rounded
/// to nearest even as it is written.
enum class kv_cache_type { f32, f16 };

/// Bytes per element of a kv_cache_type.
inline std::size_t element_bytes(kv_cache_type t) noexcept { return t == kv_cache_type::f16 ? 2 : 4; }

/// A KV cache's bytes, left unwritten until a token writes them: attention reads only the
/// positions a row holds, so a row's unused capacity is never touched, and in a large cache
/// (which the allocator maps fresh) never becomes resident memory. Zeroing a 16-row cache of a
/// 110M model's 256 positions took a quarter of a batch-16 decode of 32 tokens (bench_compact).
class cache_buffer {
 public:
  cache_buffer() = default;
  explicit cache_buffer(std::size_t bytes) : data_(new std::byte[bytes]), size_(bytes) {}  // (no writes)
  cache_buffer(const cache_buffer& other) : cache_buffer(other.size_) {
    if (size_ != 0) std::memcpy(data_.get(), other.data_.get(), size_);  // bytes, written or not
  }
  cache_buffer& operator=(const cache_buffer& other) {
    if (this != &other) *this = cache_buffer(other);
    return *this;
  }
  cache_buffer(cache_buffer&&) noexcept = default;
  cache_buffer& operator=(cache_buffer&&) noexcept = default;
  /// The elements as T (float for an f32 cache, std::uint16_t half bits for an f16 one).
  template <class T>
  T* as() noexcept {
    return reinterpret_cast<T*>(data_.get());
  }
  template <class T>
  const T* as() const noexcept {
    return reinterpret_cast<const T*>(data_.get());
  }
  std::size_t bytes() const noexcept { return size_; }

 private:
  std::unique_ptr<std::byte[]> data_;  // (storage for floats or halves; new[] aligns it for either)
  std::size_t size_ = 0;
};

/// KV caches of a batch and each row's length; scratch grows once and is reused.
struct kv_cache_state {
  int batch = 0;
  int capacity = 0;  ///< S: positions per row
  std::size_t kv_heads = 0, head_size = 0;
  std::vector<int> length;  ///< tokens already in each row's cache
  kv_cache_type type = kv_cache_type::f32;
  cache_buffer key_cache, value_cache;
  std::vector<int> pos, next_pos;
  std::vector<std::size_t> items;
  std::vector<float> scores;

  /// Forgets every row's tokens (the caches are kept for reuse).
  void reset() noexcept { std::fill(length.begin(), length.end(), 0); }

  /// Where the keys (or values) of layer l, row `row`, kv head h start: `capacity` positions of
  /// head_size floats, contiguous, so one head's attention reads one stream and threads that
  /// split the heads read disjoint memory.
  std::size_t offset(std::size_t l, int row, std::size_t h) const noexcept {
    return ((l * std::size_t(batch) + std::size_t(row)) * kv_heads + h) * std::size_t(capacity) * head_size;
  }

  /// Writes kv head h's key and value (head_size floats each) at position p of layer l, row
  /// `row` (rounded to half for an f16 cache).
  void append_head(std::size_t l, int row, std::size_t h, int p, const float* key, const float* value) noexcept {
    const std::size_t at = offset(l, row, h) + std::size_t(p) * head_size;
    if (type == kv_cache_type::f16) {
      detail::store_f16(key, head_size, key_cache.as<std::uint16_t>() + at);
      detail::store_f16(value, head_size, value_cache.as<std::uint16_t>() + at);
      return;
    }
    std::copy_n(key, head_size, key_cache.as<float>() + at);
    std::copy_n(value, head_size, value_cache.as<float>() + at);
  }

  /// Asks for the cache lines append_head(l, row, h, p, ...) will write. A batch's caches do not
  /// stay in the cores' caches between steps: a caller that asks for all of a stage's positions
  /// first has their misses overlap, rather than wait on one copy's at a time.
  void fetch_for_append(std::size_t l, int row, std::size_t h, int p) const noexcept {
    const std::size_t bytes = element_bytes(type), at = (offset(l, row, h) + std::size_t(p) * head_size) * bytes;
    for (std::size_t j = 0; j < head_size * bytes; j += 64) {  // (a 64-byte line at a time)
      __builtin_prefetch(key_cache.as<char>() + at + j, 1);
      __builtin_prefetch(value_cache.as<char>() + at + j, 1);
    }
  }

  /// Writes position p's keys and values (kv_heads * head_size floats each) into layer l, row `row`.
  void append(std::size_t l, int row, int p, const float* keys, const float* values) noexcept {
    for (std::size_t h = 0; h < kv_heads; ++h) append_head(l, row, h, p, keys + h * head_size, values + h * head_size);
  }
};

namespace detail {

/// Sizes a fresh state; `who` names the model in messages.
inline void init_kv_cache(kv_cache_state& s, int batch, int capacity, int context, int layers, std::size_t kv_heads,
                          std::size_t head_size, kv_cache_type type, const char* who) {
  if (batch <= 0)
    throw config_error(std::string(who) + "::new_state: batch must be >= 1, found " + std::to_string(batch));
  if (capacity <= 0) capacity = context;
  if (capacity > context)
    throw shape_error(std::string(who) + "::new_state: capacity " + std::to_string(capacity) +
                      " exceeds the model's context length " + std::to_string(context));
  s.batch = batch;
  s.capacity = capacity;
  s.kv_heads = kv_heads;
  s.head_size = head_size;
  s.length.assign(std::size_t(batch), 0);
  const std::size_t cache = std::size_t(layers) * std::size_t(batch) * std::size_t(capacity) * kv_heads * head_size;
  s.type = type;
  s.key_cache = cache_buffer(cache * element_bytes(type));
  s.value_cache = cache_buffer(cache * element_bytes(type));
}

/// Checks a forward call before it touches any state and writes each token's position into
/// s.pos: token i goes to row rows[i] at that row's next position.
inline void place_tokens(kv_cache_state& s, std::span<const int> rows, std::span<const token_id> tokens,
                         int input_vocab, std::span<const std::size_t> logit_items, std::size_t logits_size,
                         std::size_t vocab, const char* who) {
  const std::size_t n = tokens.size();
  const std::string w = std::string(who) + "::forward: ";
  if (rows.size() != n)
    throw shape_error(w + std::to_string(rows.size()) + " rows for " + std::to_string(n) + " tokens");
  if (logits_size != logit_items.size() * vocab)
    throw shape_error(w + "logits buffer holds " + std::to_string(logits_size) + " floats, expected " +
                      std::to_string(logit_items.size() * vocab));
  for (std::size_t i = 0; i < n; ++i) {
    const int r = rows[i];
    if (r < 0 || r >= s.batch)
      throw shape_error(w + "row " + std::to_string(r) + " outside the batch of " + std::to_string(s.batch));
    if (tokens[i] < 0 || tokens[i] >= input_vocab)
      throw shape_error(w + "token id " + std::to_string(tokens[i]) + " outside the vocabulary [0, " +
                        std::to_string(input_vocab) + ")");
  }
  s.pos.resize(std::max(s.pos.size(), n));
  s.next_pos.assign(s.length.begin(), s.length.end());
  for (std::size_t i = 0; i < n; ++i) {
    s.pos[i] = s.next_pos[std::size_t(rows[i])]++;
    if (s.pos[i] >= s.capacity)
      throw shape_error(w + "row " + std::to_string(rows[i]) + " needs position " + std::to_string(s.pos[i]) +
                        " but the context holds " + std::to_string(s.capacity) +
                        " tokens; shorten the prompt or max_new_tokens");
  }
  for (std::size_t i : logit_items)
    if (i >= n) throw shape_error(w + "logit item " + std::to_string(i) + " >= n");
}

/// Flattens one prompt per row into (rows, tokens, index of each row's last token), the
/// arguments of a prefill forward().
template <class Prompts>
void flatten_prompts(const kv_cache_state& s, const Prompts& prompts, std::vector<int>& rows,
                     std::vector<token_id>& tokens, std::vector<std::size_t>& last, const char* who) {
  if (std::size(prompts) != std::size_t(s.batch))
    throw shape_error(std::string(who) + "::prefill: " + std::to_string(std::size(prompts)) +
                      " prompts for a batch of " + std::to_string(s.batch));
  int r = 0;
  for (const auto& p : prompts) {
    if (std::size(p) == 0)
      throw shape_error(std::string(who) + "::prefill: row " + std::to_string(r) +
                        " has an empty prompt; start it with BOS");
    for (token_id t : p) {
      rows.push_back(r);
      tokens.push_back(t);
    }
    last.push_back(tokens.size() - 1);
    ++r;
  }
}

}  // namespace detail
}  // namespace ipa
