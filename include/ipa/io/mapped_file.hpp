// SPDX-License-Identifier: MIT
// A file mapped read-only into memory: its bytes without a copy through a stream. Pages come
// from the page cache as they are touched, and a model read where it lies (compact weights)
// costs no memory of its own beyond them.
#pragma once
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ipa/core/error.hpp"
#include "ipa/io/atomic_file.hpp"

namespace ipa {

/// A regular file mapped read-only (mmap, MAP_PRIVATE); move-only. Only its size at opening is
/// mapped: every offset a reader takes from the file is checked against that size first.
class mapped_file {
 public:
  explicit mapped_file(const std::string& path) : path_(path) {
    detail::require_regular_file(path);  // before open(): a FIFO would block it
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw io_error(path + ": cannot open file for reading: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw io_error(path + ": cannot determine the file size");
    }
    size_ = std::size_t(st.st_size);
    if (size_ > 0) {  // (mmap of 0 bytes is an error; an empty file is simply empty)
      void* at = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int why = errno;
      if (at == MAP_FAILED) {
        ::close(fd);
        throw io_error(path + ": cannot map the file into memory: " + std::strerror(why));
      }
      data_ = static_cast<const char*>(at);
    }
    ::close(fd);  // the mapping keeps the file
  }
  mapped_file(mapped_file&& o) noexcept
      : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  mapped_file& operator=(mapped_file o) noexcept {
    std::swap(path_, o.path_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~mapped_file() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }

  const std::string& path() const noexcept { return path_; }
  std::string_view bytes() const noexcept { return {data_, size_}; }

 private:
  std::string path_;
  const char* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ipa
