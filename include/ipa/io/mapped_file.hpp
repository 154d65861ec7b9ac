// SPDX-License-Identifier: MIT
// A file mapped read-only into memory: its bytes without a copy through a stream. Pages come
// from the page cache as they are touched, and a model read where it lies (compact weights)
// costs no memory of its own beyond them.
#pragma once
#include <cerrno>
#include <cstddef>
#include <cstdint>
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

namespace detail {
/// Hands back the whole pages of [p, p + bytes), which must lie in a read-only file mapping
/// (mapped_file): they leave the process's resident memory and read again from the file when
/// touched. (On other memory MADV_DONTNEED would zero them: only for mappings.)
inline void release_mapped_pages(const void* p, std::size_t bytes) noexcept {
  const auto page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t first = (std::uintptr_t(p) + page - 1) / page * page,
                       last = (std::uintptr_t(p) + bytes) / page * page;
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}
}  // namespace detail

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
