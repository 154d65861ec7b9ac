// SPDX-License-Identifier: MIT
// ipa: Inference-Time Policy Adapters (Lu et al., EMNLP 2023, arXiv:2305.15065). The CPU
// umbrella header; it never reaches ipa/cuda/.
#pragma once
#include "ipa/version.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"
#include "ipa/io/binary_reader.hpp"
#include "ipa/io/llama2c.hpp"
#include "ipa/io/npy.hpp"
#include "ipa/model/llama.hpp"
#include "ipa/model/llama_weights.hpp"
#include "ipa/text/llama2c_tokenizer.hpp"
#include "ipa/decode/policy.hpp"
#include "ipa/decode/fusion.hpp"
#include "ipa/decode/processors.hpp"
#include "ipa/decode/sampler.hpp"
#include "ipa/decode/decoder.hpp"
