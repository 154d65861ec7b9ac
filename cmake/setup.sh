#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian 12 packages that ipa's build needs: the library, the CLI, the tests and the
# benches (as root, or through sudo). Installs only what is missing, so it is quick to run again.
#   bash cmake/setup.sh            the packages of `cmake -S . -B build` (what the README runs)
#   bash cmake/setup.sh --ci       also clang and clang-format (.ci/run's fuzzers and format check)
set -euo pipefail

packages=(
  cmake ninja-build g++                        # the build
  libeigen3-dev xtensor-dev nlohmann-json3-dev # ipa::ipa
  libcurl4-openssl-dev                         # ipa::remote (a base behind an inference server)
  libcli11-dev                                 # the ipa CLI's option parser
  doctest-dev libbenchmark-dev                 # tests and benches
)
if [ "${1:-}" = "--ci" ]; then
  packages+=(clang clang-format)
elif [ $# -gt 0 ]; then
  echo "usage: bash cmake/setup.sh [--ci]" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "cmake/setup.sh: no apt-get here; install the equivalents of: ${missing[*]}" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "cmake/setup.sh: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "cmake/setup.sh: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
