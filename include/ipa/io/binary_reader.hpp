// SPDX-License-Identifier: MIT
// A bounds-checked reader over a file: every read is checked against the bytes that remain, so
// a truncated or lying file throws ipa::io_error before anything is allocated from its numbers.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "ipa/core/error.hpp"
#include "ipa/io/mapped_file.hpp"

namespace ipa {

/// Reads little-endian plain values from a file (mapped: reads are copies out of the page
/// cache), checking each against the file's size.
class binary_reader {
 public:
  explicit binary_reader(const std::string& path) : file_(path) {}

  const std::string& path() const noexcept { return file_.path(); }
  std::uint64_t size() const noexcept { return file_.bytes().size(); }
  std::uint64_t offset() const noexcept { return offset_; }
  std::uint64_t remaining() const noexcept { return size() - offset_; }

  /// Throws unless `bytes` more bytes exist; `what` names the field for the message.
  void require(std::uint64_t bytes, const std::string& what) const {
    if (bytes > remaining())
      throw io_error(path() + ": truncated: " + what + " needs " + std::to_string(bytes) + " bytes at offset " +
                     std::to_string(offset_) + ", but the file has only " + std::to_string(remaining()) +
                     " left (file size " + std::to_string(size()) + ")");
  }

  /// Reads `bytes` raw bytes into dst.
  void read_bytes(void* dst, std::uint64_t bytes, const std::string& what) {
    require(bytes, what);
    if (bytes != 0) std::memcpy(dst, file_.bytes().data() + offset_, bytes);
    offset_ += bytes;
  }

  /// Skips `bytes` bytes (checked like a read).
  void skip(std::uint64_t bytes, const std::string& what) {
    require(bytes, what);
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
  mapped_file file_;
  std::uint64_t offset_ = 0;
};

}  // namespace ipa
