// SPDX-License-Identifier: MIT
// Concurrent HTTP for a remote base: a batch of requests runs on libcurl's multi interface in
// one background thread, so the caller (the adapters' step) computes while the answers are in
// flight. Needs libcurl: link ipa::remote, never reached from <ipa/ipa.hpp>.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipa/core/error.hpp"

namespace ipa {

/// A server could not be reached, or answered with something ipa cannot use.
struct remote_error : error {
  using error::error;
};

/// One HTTP exchange: a POST of `body` (JSON) to `url`, or a GET when `body` is empty.
struct http_request {
  std::string url, body;
};

/// What came back. `transport_error` is set when no complete HTTP answer arrived (refused,
/// reset, timed out); otherwise `status` and `body` hold the server's answer.
struct http_response {
  long status = 0;
  std::string body, transport_error;
  bool completed() const noexcept { return transport_error.empty(); }
};

/// Limits of each exchange.
struct http_options {
  long timeout_ms = 30000;         ///< a whole exchange, connecting included
  long connect_timeout_ms = 2000;  ///< the TCP connect alone
  bool reuse_connections = true;   ///< keep-alive (see on_header for the stall it avoids)
  long max_fresh_connections = 4;  ///< without keep-alive: at once per server, the rest queue
  std::size_t max_reply_bytes = std::size_t{64} << 20;
};

/// Runs batches of HTTP requests concurrently. One batch at a time: start() hands it to the
/// background thread and returns at once; wait() blocks until every request has an answer.
class http_batch_client {
 public:
  explicit http_batch_client(http_options options = {}) : options_(options) {
    static const CURLcode global = curl_global_init(CURL_GLOBAL_DEFAULT);  // once, before any thread
    if (global != CURLE_OK) throw remote_error(std::string("libcurl: ") + curl_easy_strerror(global));
    multi_ = curl_multi_init();
    if (!multi_) throw remote_error("libcurl: curl_multi_init failed");
    // llama-server listens with a backlog of 5: a burst of more connects loses SYNs, which TCP
    // sends again only after a second. Kept-alive connections open once; fresh ones every request.
    if (!options_.reuse_connections) host_limit_ = options_.max_fresh_connections;
    worker_ = std::thread([this] { run(); });
  }
  ~http_batch_client() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    curl_multi_wakeup(multi_);
    worker_.join();
    for (auto& t : transfers_) {
      if (t.easy) curl_multi_remove_handle(multi_, t.easy);  // a batch abandoned in flight
      if (t.easy) curl_easy_cleanup(t.easy);
      curl_slist_free_all(t.headers);
    }
    curl_multi_cleanup(multi_);
  }
  http_batch_client(const http_batch_client&) = delete;
  http_batch_client& operator=(const http_batch_client&) = delete;

  /// At most n connections per server at once (0: no limit); the rest of a batch queues. A
  /// llama-server HTTP thread serves one kept-alive connection at a time (it has --parallel + 2).
  void limit_host_connections(long n) {
    std::lock_guard lock(mutex_);
    host_limit_ = n;
  }

  /// Starts a batch. A batch still in flight (its caller threw before wait()) is finished and
  /// dropped first.
  void start(std::vector<http_request> requests) {
    {
      std::unique_lock lock(mutex_);
      done_.wait(lock, [&] { return remaining_ == 0; });
      if (transfers_.size() < requests.size()) transfers_.resize(requests.size());
      for (std::size_t i = 0; i < requests.size(); ++i) {
        transfers_[i].request = std::move(requests[i]);
        transfers_[i].response = {};
      }
      size_ = requests.size();
      remaining_ = size_;
      in_flight_ = true;
      new_batch_ = true;
    }
    curl_multi_wakeup(multi_);
  }

  /// The answers of the batch in flight, in request order.
  std::vector<http_response> wait() {
    std::unique_lock lock(mutex_);
    if (!in_flight_) throw remote_error("http_batch_client: wait() without a batch in flight");
    done_.wait(lock, [&] { return remaining_ == 0; });
    in_flight_ = false;
    std::vector<http_response> out(size_);
    for (std::size_t i = 0; i < size_; ++i) out[i] = std::move(transfers_[i].response);
    return out;
  }

  /// One batch, synchronously.
  std::vector<http_response> run(std::vector<http_request> requests) {
    start(std::move(requests));
    return wait();
  }

 private:
  struct transfer {
    http_batch_client* owner = nullptr;
    bool head_seen = false;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    http_request request;
    http_response response;
    bool too_large = false;
  };

  // A kept-alive connection to llama-server stalls ~40 ms a reply: the server writes the head and
  // the body in two sends with Nagle on, so the body waits for the ACK of the head, which the
  // client delays (a fresh connection starts in quick-ACK mode, a reused one does not). When the
  // head arrives, TCP_QUICKACK sends the pending ACK at once (Linux). libcurl does not say which
  // socket a transfer reads, so every open one is told (a few, and harmless where nothing waits).
  static curl_socket_t on_open(void* user, curlsocktype, curl_sockaddr* a) {
    const curl_socket_t fd = ::socket(a->family, a->socktype, a->protocol);
    if (fd != CURL_SOCKET_BAD) static_cast<http_batch_client*>(user)->sockets_.push_back(fd);
    return fd;
  }
  static int on_close(void* user, curl_socket_t fd) {
    auto& v = static_cast<http_batch_client*>(user)->sockets_;
    v.erase(std::remove(v.begin(), v.end(), fd), v.end());
    return ::close(fd);
  }
  static std::size_t on_header(char*, std::size_t size, std::size_t count, void* user) {
    auto* t = static_cast<transfer*>(user);
    if (!t->head_seen) {
      t->head_seen = true;
      const int one = 1;
      for (curl_socket_t fd : t->owner->sockets_) ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    return size * count;
  }

  static std::size_t on_data(char* data, std::size_t size, std::size_t count, void* user) {
    auto* t = static_cast<transfer*>(user);
    const std::size_t n = size * count;
    if (t->response.body.size() + n > t->owner->options_.max_reply_bytes) {
      t->too_large = true;
      return 0;  // aborts the transfer
    }
    t->response.body.append(data, n);
    return n;
  }

  void add(transfer& t) {
    if (!t.easy) {
      t.easy = curl_easy_init();
      if (!t.easy) throw remote_error("libcurl: curl_easy_init failed");
      t.headers = curl_slist_append(nullptr, "Content-Type: application/json");
      // libcurl (before 8.6) asks before sending a body over 1 KB ("Expect: 100-continue") and
      // waits for the server's go-ahead: a round trip per request for nothing. Send it at once.
      t.headers = curl_slist_append(t.headers, "Expect:");
    } else {
      curl_easy_reset(t.easy);
    }
    t.too_large = false;
    t.owner = this;
    t.head_seen = false;
    CURL* e = t.easy;
    curl_easy_setopt(e, CURLOPT_URL, t.request.url.c_str());
    if (!t.request.body.empty()) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, t.request.body.c_str());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(t.request.body.size()));
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.headers);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &http_batch_client::on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &http_batch_client::on_open);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, this);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &http_batch_client::on_close);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, this);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &http_batch_client::on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, options_.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, options_.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_PROXY, "");  // a server named by the user, never an environment proxy
    if (!options_.reuse_connections) {
      curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
      curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    curl_multi_add_handle(multi_, e);
  }

  void finish(CURL* e, CURLcode code) {
    transfer* t = nullptr;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
    curl_multi_remove_handle(multi_, e);
    if (code == CURLE_OK) {
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &t->response.status);
    } else {
      t->response.transport_error =
          t->too_large ? "the reply is larger than " + std::to_string(options_.max_reply_bytes) + " bytes"
                       : std::string(curl_easy_strerror(code));
      t->response.body.clear();
    }
    std::lock_guard lock(mutex_);
    if (--remaining_ == 0) done_.notify_all();
  }

  void run() {
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (stopping_) return;
        if (new_batch_) {
          new_batch_ = false;
          if (host_limit_ >= 0) curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, host_limit_);
          host_limit_ = -1;
          for (std::size_t i = 0; i < size_; ++i) add(transfers_[i]);
          if (size_ == 0) done_.notify_all();
        }
      }
      int running = 0;
      curl_multi_perform(multi_, &running);
      int queued = 0;
      while (CURLMsg* m = curl_multi_info_read(multi_, &queued))
        if (m->msg == CURLMSG_DONE) finish(m->easy_handle, m->data.result);
      curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);  // woken early by start() and the destructor
    }
  }

  http_options options_;
  CURLM* multi_ = nullptr;
  std::vector<transfer> transfers_;
  std::vector<curl_socket_t> sockets_;  // open connections (touched by the worker thread only)
  std::mutex mutex_;
  std::condition_variable done_;
  std::size_t size_ = 0, remaining_ = 0;
  bool in_flight_ = false, new_batch_ = false, stopping_ = false;
  long host_limit_ = -1;  // to apply before the next batch (the multi handle is the worker's)
  std::thread worker_;
};

}  // namespace ipa
