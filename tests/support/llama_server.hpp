// SPDX-License-Identifier: MIT
// Test and bench support: the real llama.cpp llama-server (../shared/peers) started on 127.0.0.1
// and a free port, waited for on /health, stopped (or killed, to inject a crash) on request; and
// a tiny responder that answers every request with a canned reply, only to inject faults.
#pragma once
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ipa/remote/http.hpp>

namespace ipa_test {

/// The peers folder: env IPA_PEERS_DIR, else the build's default.
inline std::string peers_dir(const char* fallback) {
  const char* env = std::getenv("IPA_PEERS_DIR");
  return env && *env ? env : fallback;
}

/// A TCP port nobody listens on right now.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

/// llama-server on 127.0.0.1; the process ends with the object.
class llama_server {
 public:
  /// `kv_cache`: the server's KV cache type, "f32" (the tests' default: exact against ipa's f32
  /// caches) or "f16" (llama-server's own default).
  llama_server(std::string binary, std::string model, int slots, int context, int port = 0, int threads = 1,
               std::string kv_cache = "f32")
      : binary_(std::move(binary)),
        model_(std::move(model)),
        kv_cache_(std::move(kv_cache)),
        slots_(slots),
        context_(context),
        port_(port ? port : free_port()),
        threads_(threads) {
    start();
  }
  ~llama_server() { stop(SIGTERM); }
  llama_server(const llama_server&) = delete;
  llama_server& operator=(const llama_server&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const noexcept { return port_; }
  bool running() const noexcept { return pid_ > 0; }

  /// Starts the server and waits until /health says ok (throws after 30 s).
  void start() {
    const std::string port = std::to_string(port_), np = std::to_string(slots_), ctx = std::to_string(context_),
                      threads = std::to_string(threads_);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl(binary_.c_str(), binary_.c_str(), "-m", model_.c_str(), "--host", "127.0.0.1", "--port", port.c_str(),
              "-np", np.c_str(), "-c", ctx.c_str(), "-t", threads.c_str(), "-ctk", kv_cache_.c_str(), "-ctv",
              kv_cache_.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ipa::http_options o;
    o.timeout_ms = 1000;
    ipa::http_batch_client client(o);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error(binary_ + " exited at start (status " + std::to_string(status) + ")");
      }
      const auto r = client.run({{url() + "/health", ""}});
      if (r[0].completed() && r[0].status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    stop(SIGKILL);
    throw std::runtime_error(binary_ + " did not become healthy on " + url() + " within 30 s");
  }

  /// Ends the server (SIGKILL: a crash) and reaps it.
  void stop(int signal = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, signal);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  std::string binary_, model_, kv_cache_;
  int slots_, context_, port_, threads_;
  pid_t pid_ = -1;
};

/// Answers every HTTP request on 127.0.0.1 with reply(path, body) -> {status, body}, one
/// request per connection: a stand-in only for faults the real server never makes.
class canned_responder {
 public:
  struct reply {
    int status = 200;
    std::string body;
    int delay_ms = 0;
  };
  using handler = std::function<reply(const std::string& path, const std::string& body)>;

  explicit canned_responder(handler h) : handler_(std::move(h)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 64);
    thread_ = std::thread([this] { serve(); });
  }
  ~canned_responder() {
    stopping_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int requests() const noexcept { return requests_; }

 private:
  void serve() {
    while (!stopping_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string in;
      char buf[4096];
      std::size_t need = std::string::npos;
      while (need == std::string::npos || in.size() < need) {
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.append(buf, std::size_t(n));
        const auto head_end = in.find("\r\n\r\n");
        if (head_end != std::string::npos && need == std::string::npos) {
          std::size_t length = 0;
          const auto cl = in.find("Content-Length: ");
          if (cl != std::string::npos && cl < head_end) length = std::stoul(in.substr(cl + 16));
          need = head_end + 4 + length;
        }
      }
      ++requests_;
      const auto sp1 = in.find(' '), sp2 = in.find(' ', sp1 + 1);
      const std::string path = sp1 == std::string::npos ? "" : in.substr(sp1 + 1, sp2 - sp1 - 1);
      const auto head_end = in.find("\r\n\r\n");
      const reply r = handler_(path, head_end == std::string::npos ? "" : in.substr(head_end + 4));
      if (r.delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(r.delay_ms));
      const std::string out = "HTTP/1.1 " + std::to_string(r.status) +
                              " X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
                              std::to_string(r.body.size()) + "\r\n\r\n" + r.body;
      ::send(c, out.data(), out.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }

  handler handler_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

}  // namespace ipa_test
