// SPDX-License-Identifier: MIT
// ipa's exceptions (bad input at an API boundary) and IPA_ASSERT (broken internal invariants).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace ipa {

/// Base of every exception ipa throws.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// A file could not be opened, or its bytes are not what the format says (truncated, corrupt).
struct io_error : error {
  using error::error;
};
/// A parameter or a combination of parameters makes no sense (NaN alpha, top_p = 0, ...).
struct config_error : error {
  using error::error;
};
/// Sizes that must agree do not (vocabularies, batch sizes, context length).
struct shape_error : error {
  using error::error;
};

}  // namespace ipa

#ifdef NDEBUG
#define IPA_ASSERT(cond, msg) ((void)0)
#else
/// Checks an internal invariant in debug builds; aborts with file:line (never for user input).
#define IPA_ASSERT(cond, msg)                                                                                \
  ((cond) ? (void)0                                                                                          \
          : (std::fprintf(stderr, "%s:%d: ipa assertion failed: %s (%s)\n", __FILE__, __LINE__, #cond, msg), \
             std::abort()))
#endif
