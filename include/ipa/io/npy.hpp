// SPDX-License-Identifier: MIT
// NumPy .npy files (format versions 1-3) to and from xtensor arrays. Unlike xt::load_npy, the
// reader checks the header against the file before allocating: a lying header throws io_error.
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xarray.hpp>

#include "ipa/core/error.hpp"
#include "ipa/io/binary_reader.hpp"

namespace ipa {

namespace detail {

// The value of `key` in the header dict, e.g. "'<f4'" or "(64, 512)"; empty when absent.
inline std::string npy_header_field(const std::string& header, const std::string& key) {
  const auto at = header.find("'" + key + "'");
  if (at == std::string::npos) return {};
  auto p = header.find(':', at);
  if (p == std::string::npos) return {};
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  if (p >= header.size()) return {};
  const char open = header[p];
  const char close = open == '(' ? ')' : open == '\'' ? '\'' : ',';
  const auto end = header.find(close, p + 1);
  if (end == std::string::npos) return {};
  return header.substr(p, end - p + (close == ',' ? 0 : 1));
}

template <class T>
constexpr const char* npy_descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  else if constexpr (std::is_same_v<T, double>) return "<f8";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "<i4";
  else if constexpr (std::is_same_v<T, std::int64_t>) return "<i8";
  else static_assert(sizeof(T) == 0, "ipa::npy: supported element types are float, double, int32, int64");
}

}  // namespace detail

/// Reads a C-ordered little-endian .npy array of float32/float64/int32/int64 into an xarray<T>,
/// converting float32 <-> float64 and int32 -> int64 when asked. Every size is checked first.
template <class T>
xt::xarray<T> load_npy(const std::string& path) {
  binary_reader in(path);
  char magic[6];
  in.read_bytes(magic, 6, "the .npy magic");
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw io_error(path + ": not a .npy file (bad magic)");
  const auto major = in.read<std::uint8_t>("the .npy version");
  in.read<std::uint8_t>("the .npy minor version");
  std::uint32_t header_len = 0;
  if (major == 1) header_len = in.read<std::uint16_t>("the .npy header length");
  else if (major == 2 || major == 3) header_len = in.read<std::uint32_t>("the .npy header length");
  else throw io_error(path + ": unsupported .npy version " + std::to_string(major) + " (expected 1, 2 or 3)");
  if (header_len > 65536)
    throw io_error(path + ": .npy header of " + std::to_string(header_len) + " bytes is implausible");
  std::string header(header_len, '\0');
  in.read_bytes(header.data(), header_len, "the .npy header");

  const std::string descr = detail::npy_header_field(header, "descr");
  const std::string fortran = detail::npy_header_field(header, "fortran_order");
  const std::string shape_text = detail::npy_header_field(header, "shape");
  if (descr.empty() || fortran.empty() || shape_text.empty())
    throw io_error(path + ": .npy header lacks descr, fortran_order or shape: " + header);
  if (fortran.rfind("False", 0) != 0) throw io_error(path + ": Fortran-ordered .npy arrays are not supported");
  std::vector<std::size_t> shape;
  std::uint64_t count = 1;
  for (std::size_t p = 1; p + 1 < shape_text.size();) {
    while (p < shape_text.size() && (shape_text[p] == ' ' || shape_text[p] == ',')) ++p;
    if (p + 1 >= shape_text.size()) break;
    std::size_t used = 0;
    unsigned long long dim = 0;
    try {
      dim = std::stoull(shape_text.substr(p), &used);
    } catch (const std::exception&) {
      throw io_error(path + ": bad .npy shape " + shape_text);
    }
    if (dim != 0 && count > (std::uint64_t(1) << 40) / dim)
      throw io_error(path + ": .npy shape " + shape_text + " is too large");
    count *= dim;
    shape.push_back(static_cast<std::size_t>(dim));
    p += used;
  }
  const std::string type = descr.size() == 5 ? descr.substr(1, 3) : "";
  std::size_t item = 0;
  if (type == "<f4" || type == "<i4") item = 4;
  else if (type == "<f8" || type == "<i8") item = 8;
  else throw io_error(path + ": .npy dtype " + descr + " is not supported (expected <f4, <f8, <i4 or <i8)");
  if (in.remaining() != count * item)
    throw io_error(path + ": .npy shape " + shape_text + " of " + descr + " needs " + std::to_string(count * item) +
                   " data bytes, the file has " + std::to_string(in.remaining()));
  const bool is_float = type[1] == 'f';
  if (is_float != std::is_floating_point_v<T>)
    throw io_error(path + ": .npy dtype " + descr + " cannot be read as " + detail::npy_descr<T>());

  xt::xarray<T> out = xt::xarray<T>::from_shape(shape);
  std::vector<char> raw(count * item);
  in.read_bytes(raw.data(), raw.size(), "the .npy data");
  for (std::size_t i = 0; i < count; ++i) {
    const char* src = raw.data() + i * item;
    if (type == "<f4") {
      float v;
      std::memcpy(&v, src, 4);
      out.data()[i] = static_cast<T>(v);
    } else if (type == "<f8") {
      double v;
      std::memcpy(&v, src, 8);
      out.data()[i] = static_cast<T>(v);
    } else if (type == "<i4") {
      std::int32_t v;
      std::memcpy(&v, src, 4);
      out.data()[i] = static_cast<T>(v);
    } else {
      std::int64_t v;
      std::memcpy(&v, src, 8);
      if constexpr (std::is_integral_v<T> && sizeof(T) < 8)
        if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
          throw io_error(path + ": .npy value " + std::to_string(v) + " does not fit the requested type");
      out.data()[i] = static_cast<T>(v);
    }
  }
  return out;
}

/// Writes a C-ordered .npy (version 1.0) of float32/float64/int32/int64.
template <class E>
void save_npy(const std::string& path, const E& array) {
  using T = std::decay_t<typename E::value_type>;
  std::string shape = "(";
  for (std::size_t i = 0; i < array.dimension(); ++i)
    shape += std::to_string(array.shape()[i]) + (array.dimension() == 1      ? ",)"
                                                 : i + 1 < array.dimension() ? ", "
                                                                             : ")");
  if (array.dimension() == 0) shape += ")";
  std::string header =
      std::string("{'descr': '") + detail::npy_descr<T>() + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw io_error(path + ": cannot open for writing");
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& v : array) {
    const T value = v;
    out.write(reinterpret_cast<const char*>(&value), sizeof value);
  }
  if (!out) throw io_error(path + ": write failed");
}

}  // namespace ipa
