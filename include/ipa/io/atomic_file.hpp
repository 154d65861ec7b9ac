// SPDX-License-Identifier: MIT
// Crash-safe writes (POSIX): data goes to a temporary file in the same folder, is fsync'ed,
// then renamed over the target, and the folder is fsync'ed. A crash at any moment leaves
// either the old file or the new one, never a torn mix. And a folder lock for one writer at a
// time.
#pragma once
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "ipa/core/error.hpp"

namespace ipa {

namespace detail {
inline void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw io_error(path + ": cannot open to sync: " + std::strerror(errno));
  const int r = ::fsync(fd);
  ::close(fd);
  if (r != 0) throw io_error(path + ": fsync failed: " + std::strerror(errno));
}
}  // namespace detail

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
inline void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::filesystem::path target(path);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw io_error(tmp + ": cannot create: " + std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw io_error(tmp + ": write failed: " + why);
    }
    done += std::size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw io_error(tmp + ": fsync/close failed: " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw io_error(path + ": rename failed: " + why);
  }
  const auto parent = target.parent_path();
  detail::fsync_path(parent.empty() ? "." : parent.string(), true);
}

namespace detail {
/// What a file that is not a regular file is, for messages.
inline const char* file_kind(std::filesystem::file_type type) {
  using std::filesystem::file_type;
  return type == file_type::directory ? "a folder"
         : type == file_type::fifo    ? "a FIFO (named pipe)"
         : type == file_type::socket  ? "a socket"
                                      : "a device or special file";
}

/// Throws unless `path` is a regular file (or a link to one), asking stat() only: opening a FIFO
/// with no writer would block forever, and a device or a folder is never a model or a tokenizer.
inline void require_regular_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::regular) return;
  if (st.type() == fs::file_type::not_found) throw io_error(path + ": no such file");
  if (ec) throw io_error(path + ": cannot read: " + ec.message());
  throw io_error(path + ": expected a regular file, found " + file_kind(st.type()));
}
}  // namespace detail

/// The whole content of a file; io_error if it cannot be read.
inline std::string read_file(const std::string& path) {
  detail::require_regular_file(path);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(path + ": cannot read: " + ec.message());
  std::string out(size, '\0');
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw io_error(path + ": cannot open: " + std::strerror(errno));
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, out.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      throw io_error(path + ": read failed after " + std::to_string(done) + " of " + std::to_string(size) + " bytes");
    }
    done += std::size_t(n);
  }
  ::close(fd);
  return out;
}

/// An exclusive lock on a folder (flock on DIR/.lock, which holds the owner's pid): one writer
/// at a time. The kernel drops it when the process ends, however it ends, so a killed run never
/// leaves a stale lock behind.
class dir_lock {
 public:
  /// Locks `dir` (which must exist) or throws io_error naming the process that holds it.
  explicit dir_lock(const std::string& dir) : path_(dir + "/.lock") {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw io_error(path_ + ": cannot open the lock file: " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int why = errno;
      char holder[32] = {};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      std::string pid = n > 0 ? std::string(holder, std::size_t(n)) : std::string();
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      if (why == EWOULDBLOCK)
        throw io_error(dir + " is in use by another process (pid " + (pid.empty() ? "unknown" : pid) + ", holding " +
                       path_ + "); wait for it to finish or choose another folder");
      throw io_error(path_ + ": cannot lock: " + std::strerror(why));
    }
    // who holds it, for the message above (the lock holds even if this note cannot be written)
    const std::string pid = std::to_string(::getpid()) + "\n";
    [[maybe_unused]] const bool noted =
        ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) == ssize_t(pid.size());
  }
  ~dir_lock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  dir_lock(const dir_lock&) = delete;
  dir_lock& operator=(const dir_lock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace ipa
