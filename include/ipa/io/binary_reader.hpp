// SPDX-License-Identifier: MIT
// A bounds-checked reader over a file: every read is checked against the bytes that remain, so
// a truncated or lying file throws ipa::io_error before anything is allocated from its numbers.
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <type_traits>

#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"

namespace ipa {

/// Reads little-endian plain values from a file, checking each against the file's size.
class binary_reader {
 public:
  explicit binary_reader(const std::string& path) : path_(path) {
    detail::require_regular_file(path);  // before open(): a FIFO would block it
    in_.open(path, std::ios::binary);
    if (!in_) throw io_error(path + ": cannot open file for reading");
    in_.seekg(0, std::ios::end);
    const auto end = in_.tellg();
    if (end < 0) throw io_error(path + ": cannot determine the file size");
    size_ = static_cast<std::uint64_t>(end);
    in_.seekg(0, std::ios::beg);
  }

  const std::string& path() const noexcept { return path_; }
  std::uint64_t size() const noexcept { return size_; }
  std::uint64_t offset() const noexcept { return offset_; }
  std::uint64_t remaining() const noexcept { return size_ - offset_; }

  /// Throws unless `bytes` more bytes exist; `what` names the field for the message.
  void require(std::uint64_t bytes, const std::string& what) const {
    if (bytes > remaining())
      throw io_error(path_ + ": truncated: " + what + " needs " + std::to_string(bytes) + " bytes at offset " +
                     std::to_string(offset_) + ", but the file has only " + std::to_string(remaining()) +
                     " left (file size " + std::to_string(size_) + ")");
  }

  /// Reads `bytes` raw bytes into dst.
  void read_bytes(void* dst, std::uint64_t bytes, const std::string& what) {
    require(bytes, what);
    if (bytes == 0) return;
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes));
    if (!in_) throw io_error(path_ + ": read error in " + what + " at offset " + std::to_string(offset_));
    offset_ += bytes;
  }

  /// Skips `bytes` bytes (checked like a read).
  void skip(std::uint64_t bytes, const std::string& what) {
    require(bytes, what);
    in_.seekg(static_cast<std::streamoff>(bytes), std::ios::cur);
    if (!in_) throw io_error(path_ + ": seek error in " + what + " at offset " + std::to_string(offset_));
    offset_ += bytes;
  }

  /// Reads one trivially copyable value (the platform is little-endian, as the formats are).
  template <class T>
  T read(const std::string& what) {
    static_assert(std::is_trivially_copyable_v<T>, "ipa::binary_reader::read: T must be plain data");
    T value;
    read_bytes(&value, sizeof(T), what);
    return value;
  }

 private:
  std::string path_;
  std::ifstream in_;
  std::uint64_t size_ = 0;
  std::uint64_t offset_ = 0;
};

}  // namespace ipa
