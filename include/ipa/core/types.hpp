// SPDX-License-Identifier: MIT
// Vocabulary types shared by every layer.
#pragma once
#include <cstdint>

namespace ipa {
/// One token of a vocabulary.
using token_id = std::int32_t;
}  // namespace ipa
