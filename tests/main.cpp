// SPDX-License-Identifier: MIT
// doctest's main for ipa_tests.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
