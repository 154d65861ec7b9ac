// SPDX-License-Identifier: MIT
// peak_rss FILE COMMAND [ARGS...]: runs COMMAND, writes its peak resident set size in KiB to
// FILE and exits with its exit status (the CLI tests bound the memory of `ipa generate`).
#include <cstdio>
#include <fstream>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: peak_rss FILE COMMAND [ARGS...]\n");
    return 2;
  }
  const pid_t child = fork();
  if (child < 0) return std::perror("peak_rss: fork"), 2;
  if (child == 0) {
    execvp(argv[2], argv + 2);
    std::perror("peak_rss: exec");
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  if (wait4(child, &status, 0, &usage) != child) return std::perror("peak_rss: wait4"), 2;
  std::ofstream(argv[1]) << usage.ru_maxrss << '\n';  // KiB on Linux
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
