// SPDX-License-Identifier: MIT
// ipa's version; CMake parses these three lines.
#pragma once
#define IPA_VERSION_MAJOR 0
#define IPA_VERSION_MINOR 1
#define IPA_VERSION_PATCH 0
#define IPA_VERSION_STRING "0.1.0"
