#include "common/scenario/output_files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/types.h"

namespace computron {
namespace fs = std::filesystem;
namespace {

std::string reason(int error) { return error != 0 ? std::strerror(error) : "write failed"; }

[[noreturn]] void failWrite(const fs::path& path, int error) {
  throw OutputError(path.string() + ": cannot write (" + reason(error) + ")");
}

// `target` with `suffix` and the process id added to its name, in the same folder (so a rename
// between them stays on one file system).
fs::path besideWithSuffix(const fs::path& target, const std::string& suffix) {
  return target.parent_path() / (target.filename().string() + suffix + "-" + std::to_string(::getpid()));
}

}  // namespace

StagedDir::StagedDir(fs::path target) {
  std::error_code ec;
  target_ = fs::absolute(target, ec).lexically_normal();
  if (target_.filename().empty()) target_ = target_.parent_path();  // "out/x/"
  if (ec || target_ == target_.root_path() || target_.filename() == "..")
    throw ConfigError("output folder " + target.string() + ": must name a folder below the current one or an absolute path");
  if (fs::exists(target_, ec) && !fs::is_directory(target_, ec))
    throw ConfigError("output folder " + target_.string() + ": exists and is not a folder");
  staged_ = besideWithSuffix(target_, ".tmp");
  const fs::path parent = staged_.parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec) throw ConfigError("output folder " + target_.string() + ": cannot create " + parent.string() + " (" + ec.message() + ")");
  }
  fs::remove_all(staged_, ec);
  if (!fs::create_directory(staged_, ec) || ec)
    throw ConfigError("output folder " + target_.string() + ": cannot create " + staged_.string() + " (" +
                      (ec ? ec.message() : std::string("exists")) + ")");
}

StagedDir::~StagedDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staged_, ec);
}

void StagedDir::commit() {
  std::error_code ec;
  fs::path old;
  if (fs::exists(target_, ec)) {
    old = besideWithSuffix(target_, ".old");
    fs::remove_all(old, ec);
    fs::rename(target_, old, ec);
    if (ec) throw OutputError(target_.string() + ": cannot replace the old outputs (" + ec.message() + ")");
  }
  fs::rename(staged_, target_, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, target_, ec);  // put the old outputs back
    throw OutputError(target_.string() + ": cannot move the outputs into place (" + ec.message() + ")");
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

void openChecked(std::ofstream& out, const fs::path& path) {
  errno = 0;
  out.open(path, std::ios::binary | std::ios::trunc);
  if (!out) failWrite(path, errno);
}

void closeChecked(std::ofstream& out, const fs::path& path) {
  if (!out) failWrite(path, errno);  // an earlier write failed; errno still holds why
  errno = 0;
  out.flush();
  const bool written = static_cast<bool>(out);
  const int flush_error = errno;
  out.close();
  if (!written) failWrite(path, flush_error);
  if (!out) failWrite(path, errno);
}

void checkOutputFilePath(const fs::path& path, const std::string& what) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw ConfigError(what + " " + path.string() + ": is a folder");
}

void writeFileWhole(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  checkOutputFilePath(path, "output file");
  std::error_code ec;
  const bool special = fs::exists(path, ec) && !fs::is_regular_file(path, ec);
  const fs::path staged = special ? path : besideWithSuffix(path, ".tmp");
  std::ofstream out;
  errno = 0;
  out.open(staged, std::ios::binary | std::ios::trunc);
  if (!out) failWrite(path, errno);  // named as the user wrote it
  try {
    write(out);
    closeChecked(out, path);
  } catch (...) {
    if (!special) fs::remove(staged, ec);
    throw;
  }
  if (special) return;
  fs::rename(staged, path, ec);
  if (ec) {
    fs::remove(staged, ec);
    throw OutputError(path.string() + ": cannot move into place (" + ec.message() + ")");
  }
}

}  // namespace computron
