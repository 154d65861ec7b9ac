// SPDX-License-Identifier: MIT
// A reward computed by another program (POSIX). The command is started once through /bin/sh;
// each batch is sent as JSON lines on its stdin, one {"prompt": ..., "response": ...} per
// sample, and it answers one line per sample on stdout: a number, or {"score": number}.
// A timeout, a dead process or a garbage answer is a clear ipa::error, never a hang.
#pragma once
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/reward/reward.hpp"

namespace ipa {

/// Scores samples by asking an external command (see the file comment for the protocol).
class process_reward {
 public:
  /// Starts `command` (run by /bin/sh -c). `timeout_seconds` bounds each batch's answer.
  explicit process_reward(std::string command, double timeout_seconds = 60.0) : state_(std::make_shared<child>()) {
    state_->command = std::move(command);
    state_->timeout = timeout_seconds;
    if (state_->command.empty()) throw config_error("process_reward: empty command");
    if (!(timeout_seconds > 0)) throw config_error("process_reward: timeout must be > 0 seconds");
    state_->start();
  }

  void score(std::span<const sample_view> batch, std::span<double> scores) {
    detail::check_batch(batch, scores, "process_reward");
    child& c = *state_;
    std::string out;
    for (const sample_view& s : batch) {
      nlohmann::json j = {{"prompt", std::string(s.prompt_text)},
                          {"response", std::string(s.response_text)},
                          {"prompt_ids", std::vector<int>(s.prompt.begin(), s.prompt.end())},
                          {"response_ids", std::vector<int>(s.response.begin(), s.response.end())}};
      out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      out += '\n';
    }
    c.write_all(out);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::string line = c.read_line();
      scores[i] = parse_score(line, c.command);
    }
  }

 private:
  static double parse_score(const std::string& line, const std::string& command) {
    double v = NAN;
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.is_number()) v = j.get<double>();
      else if (j.is_object() && j.contains("score") && j["score"].is_number()) v = j["score"].get<double>();
    } catch (const nlohmann::json::exception&) {
    }
    if (!std::isfinite(v))
      throw io_error("process_reward: '" + command + "' answered '" + line.substr(0, 200) +
                     "'; expected one finite number or {\"score\": number} per line");
    return v;
  }

  struct child {
    std::string command;
    double timeout = 60;
    pid_t pid = -1;
    int to_child = -1, from_child = -1;
    std::string buffer;

    void start() {
      int in[2], out[2];
      if (pipe(in) != 0 || pipe(out) != 0)
        throw io_error("process_reward: pipe() failed: " + std::string(std::strerror(errno)));
      pid = fork();
      if (pid < 0) throw io_error("process_reward: fork() failed: " + std::string(std::strerror(errno)));
      if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
        _exit(127);
      }
      close(in[0]);
      close(out[1]);
      to_child = in[1];
      from_child = out[0];
      fcntl(from_child, F_SETFD, FD_CLOEXEC);
      fcntl(to_child, F_SETFD, FD_CLOEXEC);
    }
    ~child() {
      if (to_child >= 0) close(to_child);
      if (from_child >= 0) close(from_child);
      if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, nullptr, 0);
      }
    }
    [[noreturn]] void died(const std::string& when) {
      int status = 0;
      std::string how = "closed its output";
      // a closed pipe usually means the process is exiting: give it a moment to be reaped
      for (int tries = 0; pid > 0 && tries < 200; ++tries) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
          how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                  : "was killed by signal " + std::to_string(WTERMSIG(status));
          pid = -1;
          break;
        }
        usleep(5000);
      }
      throw io_error("process_reward: '" + command + "' " + how + " " + when);
    }
    void write_all(const std::string& data) {
      // a closed pipe must be an error here, not SIGPIPE killing the trainer
      struct sigaction ignore {
      }, old{};
      ignore.sa_handler = SIG_IGN;
      sigaction(SIGPIPE, &ignore, &old);
      std::size_t done = 0;
      while (done < data.size()) {
        const ssize_t n = ::write(to_child, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          sigaction(SIGPIPE, &old, nullptr);
          died("while the batch was being sent");
        }
        done += std::size_t(n);
      }
      sigaction(SIGPIPE, &old, nullptr);
    }
    std::string read_line() {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
      for (;;) {
        const auto nl = buffer.find('\n');
        if (nl != std::string::npos) {
          std::string line = buffer.substr(0, nl);
          buffer.erase(0, nl + 1);
          return line;
        }
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
          throw io_error("process_reward: '" + command + "' gave no answer within " + std::to_string(timeout) + " s");
        pollfd p{from_child, POLLIN, 0};
        const int r = poll(&p, 1, int(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;  // the deadline check above reports it
        char chunk[4096];
        const ssize_t n = ::read(from_child, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) died("before answering every sample");
        buffer.append(chunk, std::size_t(n));
      }
    }
  };
  std::shared_ptr<child> state_;  // shared: copies of a reward talk to the same process
};

}  // namespace ipa
