// Outputs that are whole or absent. A run's folder is written under a temporary name beside the
// target and renamed into place when complete; a single file likewise. Every write and close is
// checked: a failure throws OutputError naming the path and the system's reason (exit code 1),
// and what was staged is removed, so a failed run leaves neither partial files nor a mix of old
// and new ones.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <string>

namespace computron {

// A folder staged as `<target>.tmp-<pid>` beside `target`. commit() replaces `target` with it
// (an older folder of that name is moved aside, then removed); destroyed without commit(), the
// staged folder is removed. A target that exists and is not a folder, or a parent that cannot
// be written, is bad input (ConfigError) found before anything is written.
class StagedDir {
 public:
  explicit StagedDir(std::filesystem::path target);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::filesystem::path& path() const { return staged_; }  // where the files go now
  const std::filesystem::path& target() const { return target_; }
  void commit();

 private:
  std::filesystem::path target_, staged_;
  bool committed_ = false;
};

// Opens `path` for writing (truncating); OutputError when it cannot.
void openChecked(std::ofstream& out, const std::filesystem::path& path);
// Flushes and closes `out`; OutputError naming `path` when any write or the close failed.
void closeChecked(std::ofstream& out, const std::filesystem::path& path);

// Writes `path` whole: `write` fills a temporary file beside it, renamed into place when every
// write succeeded. A special file (/dev/stdout, /dev/full, a pipe) is written in place, checked
// the same way. A path that is a folder is bad input (ConfigError).
void writeFileWhole(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);

// Refuses (ConfigError) an output file path that is an existing folder, before a run starts.
void checkOutputFilePath(const std::filesystem::path& path, const std::string& what);

}  // namespace computron
