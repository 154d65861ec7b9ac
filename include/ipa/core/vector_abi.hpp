// SPDX-License-Identifier: MIT
// Compiler settings of the SIMD helpers: the -Wpsabi note and the unrolling hint.
//
// ipa's SIMD helpers take and return 32-byte GCC vectors (8 floats). Compiled without AVX, GCC
// and Clang warn that such functions pass vectors differently than with AVX (-Wpsabi). The
// helpers are inline and never cross a library boundary, so the warning says nothing about them,
// but GCC reports it at the end of the translation unit, outside any push/pop: it can only be
// turned off for the rest of the unit (Clang, at the helpers' calls, is treated the same way).
// Without this, a consumer building with -Werror at the default -march fails.
#pragma once
#if defined(__GNUC__) && !defined(__AVX__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Unrolling hint for the SIMD loops, `#pragma GCC unroll n` (GCC and Clang). nvcc's front end
// does not know that pragma and warns in every .cu file that includes the CPU kernels (their CPU
// twins there need no hint), so it expands to nothing under nvcc.
#if defined(__CUDACC__)
#define IPA_UNROLL(n)
#else
#define IPA_PRAGMA(text) _Pragma(#text)
#define IPA_UNROLL(n) IPA_PRAGMA(GCC unroll n)
#endif
