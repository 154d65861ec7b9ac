// SPDX-License-Identifier: MIT
// ipa's CUDA backend (target ipa::cuda): include from .cu files only. The CPU umbrella
// ipa/ipa.hpp never reaches this folder.
#pragma once
#include "ipa/cuda/check.cuh"
#include "ipa/cuda/cublas.cuh"
#include "ipa/cuda/device.cuh"
#include "ipa/cuda/fusion.cuh"
