// SPDX-License-Identifier: MIT
// ipa's SIMD helpers take and return 32-byte GCC vectors (8 floats). Compiled without AVX, GCC
// warns that such functions pass vectors differently than with AVX (-Wpsabi). The helpers are
// inline and never cross a library boundary, so the warning says nothing about them, but GCC
// reports it at the end of the translation unit, outside any push/pop: it can only be turned off
// for the rest of the unit. Without this, a consumer building with -Werror at the default -march
// fails. (Clang does not warn here.)
#pragma once
#if defined(__GNUC__) && !defined(__clang__) && !defined(__AVX__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
