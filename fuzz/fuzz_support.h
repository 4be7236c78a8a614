// Shared by the harnesses: a scratch folder for readers that take a path, and the guard that
// keeps one execution short (the fuzzer looks for crashes and sanitizer reports, not for the
// longest valid run).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

namespace computron::fuzz {

// A folder of this process's own, created once and removed when the process exits normally.
class ScratchFolder {
 public:
  ScratchFolder() : path_(std::filesystem::temp_directory_path() / ("computron-fuzz-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~ScratchFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchFolder(const ScratchFolder&) = delete;
  ScratchFolder& operator=(const ScratchFolder&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline const std::filesystem::path& scratchDir() {
  static const ScratchFolder folder;
  return folder.path();
}

// Writes `size` bytes to `path`, replacing it.
inline void writeBytes(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Shortens what validation accepts but would take long to run through: the scenario's duration
// (generated workloads are read ahead by some policies) and the number of model copies.
inline void keepShort(nlohmann::json& doc) {
  if (!doc.is_object()) return;
  if (auto d = doc.find("duration_s"); d != doc.end() && d->is_number() && d->get<double>() > 60) *d = 60;
  if (auto m = doc.find("models"); m != doc.end() && m->is_array()) {
    if (m->size() > 64) m->erase(m->begin() + 64, m->end());
    for (auto& model : *m)
      if (model.is_object())
        if (auto c = model.find("count"); c != model.end() && c->is_number() && c->get<double>() > 64) *c = 64;
  }
}

}  // namespace computron::fuzz
