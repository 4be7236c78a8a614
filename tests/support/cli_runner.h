// Running the built `computron` binary from tests: its exit code, stdout and stderr, files read
// whole, and temporary folders removed at the end of the test.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace computron::fakes {

inline std::string readWholeFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout, then stderr
  std::string out;     // stdout alone
  std::string err;     // stderr alone (written to a file, so not a terminal)
};

// Runs `binary args` through the shell, stdout and stderr captured apart.
inline CommandResult runBinary(const std::string& binary, const std::string& args) {
  static int calls = 0;
  const std::filesystem::path err_file = std::filesystem::temp_directory_path() /
                                         ("computron-stderr-" + std::to_string(::getpid()) + "-" + std::to_string(calls++));
  const std::string command = binary + " " + args + " 2>" + err_file.string();
  CommandResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe) != nullptr) result.out += buf.data();
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = readWholeFile(err_file);
  std::filesystem::remove(err_file);
  result.output = result.out + result.err;
  return result;
}

// A fresh folder under the system's temporary folder, removed with everything in it at the end.
class ScratchDir {
 public:
  ScratchDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("computron-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

}  // namespace computron::fakes
