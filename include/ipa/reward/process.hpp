// SPDX-License-Identifier: MIT
// A reward computed by another program (POSIX), run as a filter once per batch: the command
// starts through /bin/sh, reads the batch as JSON lines on its stdin (one {"prompt", "response",
// "prompt_ids", "response_ids"} per sample) until the end of input, writes one line per sample on
// stdout (a number, or {"score": number}) and exits with status 0. Anything else (too few or too
// many lines, a non-number, NaN, inf or a magnitude above max_magnitude, a non-zero exit, a
// signal, no end within the timeout) is a reward_error naming the command, the sample and what
// was read: never a hang, never a score given to the wrong sample.
#pragma once
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/reward/reward.hpp"

namespace ipa {

/// A reward function failed: its process misbehaved or its answer is not a usable score.
struct reward_error : error {
  using error::error;
};

namespace detail {

/// What a filter process wrote on stdout and how it ended.
struct filter_result {
  std::string output;
  int status = 0;  // as waitpid reports it
};

/// Runs `command` through /bin/sh in a process group of its own, feeds it `input` and closes its
/// stdin, collects its stdout until it closes it, and reaps it. Past `timeout_s` the whole group
/// is killed and that is an error. Its stderr is ipa's own: a chatty child cannot fill a pipe
/// that nobody reads.
inline filter_result run_filter(const std::string& command, const std::string& input, double timeout_s,
                                std::size_t max_output = std::size_t(64) << 20) {
  auto fail = [&](const std::string& what) -> reward_error {
    return reward_error("reward command '" + command + "': " + what);
  };
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) throw fail(std::string("pipe() failed: ") + std::strerror(errno));
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]), close(in[1]);
    throw fail(std::string("pipe() failed: ") + std::strerror(errno));
  }
  const pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    throw fail(std::string("fork() failed: ") + std::strerror(errno));
  }
  if (pid == 0) {  // the child: only async-signal-safe calls until exec
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[1], 1);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);  // also here: whichever runs first, the group exists before a kill
  close(in[0]);
  close(out[1]);
  int to_child = in[1];
  const int from_child = out[0];
  fcntl(to_child, F_SETFL, O_NONBLOCK);

  // A child that stops reading makes write() fail with EPIPE; SIGPIPE is blocked in this thread
  // meanwhile (and a pending one consumed) so that it cannot kill the trainer.
  sigset_t pipe_only, old_mask;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old_mask);

  filter_result r;
  std::string error;
  std::size_t sent = 0;
  if (input.empty()) close(to_child), to_child = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      error = "no answer within " + std::to_string(timeout_s) + " s (the reward timeout); killed it";
      break;
    }
    pollfd fds[2] = {{from_child, POLLIN, 0}, {to_child, POLLOUT, 0}};
    const int n = poll(fds, to_child >= 0 ? 2 : 1, int(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR) {
      error = std::string("poll() failed: ") + std::strerror(errno);
      break;
    }
    if (n <= 0) continue;
    if (to_child >= 0 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t w = ::write(to_child, input.data() + sent, input.size() - sent);
      if (w > 0) sent += std::size_t(w);
      // EPIPE: it exited or closed its input early; what it wrote still decides
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == input.size()) close(to_child), to_child = -1;
    }
    if (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) {
      char chunk[4096];
      const ssize_t got = ::read(from_child, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;  // end of its output
      r.output.append(chunk, std::size_t(got));
      if (r.output.size() > max_output) {
        error = "wrote more than " + std::to_string(max_output) + " bytes; killed it";
        break;
      }
    }
  }
  if (to_child >= 0) close(to_child);
  close(from_child);
  if (!error.empty()) kill(-pid, SIGKILL);
  // reap it: after its output ended it is exiting; a child that lingers past the deadline (its
  // stdout closed but still running) is killed too
  for (;;) {
    const pid_t w = waitpid(pid, &r.status, WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) break;
    if (std::chrono::steady_clock::now() > deadline) {
      if (error.empty()) error = "did not exit within " + std::to_string(timeout_s) + " s (the reward timeout)";
      kill(-pid, SIGKILL);
      waitpid(pid, &r.status, 0);
      break;
    }
    usleep(1000);
  }
  const timespec no_wait{0, 0};
  while (sigtimedwait(&pipe_only, nullptr, &no_wait) == SIGPIPE) {
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (!error.empty()) throw fail(error);
  return r;
}

}  // namespace detail

/// Scores samples by running an external command on each batch (see the file comment).
class process_reward {
 public:
  /// Scores beyond this magnitude are refused: an RL reward that large is a bug in the command.
  static constexpr double max_magnitude = 1e6;

  /// `command` runs through /bin/sh -c once per batch; `timeout_seconds` bounds each run.
  explicit process_reward(std::string command, double timeout_seconds = 60.0)
      : command_(std::move(command)), timeout_(timeout_seconds) {
    if (command_.find_first_not_of(" \t") == std::string::npos) throw config_error("process_reward: empty command");
    if (!(timeout_seconds > 0) || !std::isfinite(timeout_seconds))
      throw config_error("process_reward: the timeout must be a finite number of seconds > 0, found " +
                         std::to_string(timeout_seconds));
  }

  void score(std::span<const sample_view> batch, std::span<double> scores) const {
    detail::check_batch(batch, scores, "process_reward");
    std::string input;
    for (const sample_view& s : batch) {
      const nlohmann::json j = {{"prompt", std::string(s.prompt_text)},
                                {"response", std::string(s.response_text)},
                                {"prompt_ids", std::vector<int>(s.prompt.begin(), s.prompt.end())},
                                {"response_ids", std::vector<int>(s.response.begin(), s.response.end())}};
      input += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      input += '\n';
    }
    const detail::filter_result r = detail::run_filter(command_, input, timeout_);
    if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0)
      throw failure(WIFEXITED(r.status) ? "exited with status " + std::to_string(WEXITSTATUS(r.status))
                                        : "was killed by signal " + std::to_string(WTERMSIG(r.status)));
    const std::vector<std::string_view> lines = split_lines(r.output);
    if (lines.size() != batch.size())
      throw failure("answered " + std::to_string(lines.size()) + " line(s) for " + std::to_string(batch.size()) +
                    " sample(s); expected exactly one score per sample");
    for (std::size_t i = 0; i < lines.size(); ++i) scores[i] = parse_score(lines[i], i);
  }

  const std::string& command() const noexcept { return command_; }
  double timeout_seconds() const noexcept { return timeout_; }

 private:
  reward_error failure(const std::string& what) const {
    return reward_error("reward command '" + command_ + "' " + what);
  }

  // its lines, without a final '\n' or any '\r' before one
  static std::vector<std::string_view> split_lines(std::string_view text) {
    std::vector<std::string_view> lines;
    while (!text.empty()) {
      const std::size_t nl = std::min(text.find('\n'), text.size());
      std::string_view line = text.substr(0, nl);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      lines.push_back(line);
      text.remove_prefix(std::min(nl + 1, text.size()));
    }
    return lines;
  }

  double parse_score(std::string_view line, std::size_t sample) const {
    double v = NAN;
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.is_number()) v = j.get<double>();
      else if (j.is_object() && j.contains("score") && j["score"].is_number()) v = j["score"].get<double>();
    } catch (const nlohmann::json::exception&) {
    }
    if (!std::isfinite(v) || std::abs(v) > max_magnitude)
      throw failure("answered '" + std::string(line.substr(0, 200)) + "' for sample " + std::to_string(sample) +
                    "; expected a finite number (or {\"score\": number}) of magnitude <= 1e6");
    return v;
  }

  std::string command_;
  double timeout_;
};

}  // namespace ipa
