// Writes small safetensors files for tests, with hooks to corrupt the header on purpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace computron::model::testing_support {

struct FakeTensor {
  FakeTensor(std::string n, std::string d, std::vector<std::int64_t> s, std::vector<std::byte> bytes)
      : name(std::move(n)), dtype(std::move(d)), shape(std::move(s)), data(std::move(bytes)) {}
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;
  std::optional<std::pair<std::uint64_t, std::uint64_t>> offsets_override;  // data_offsets to claim
  std::optional<std::string> shape_override;                                  // raw JSON for "shape"
};

// A fresh folder under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "computron-model-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void writeRaw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Tensors are laid out in the given order, back to back, as real writers do.
inline void writeSafetensors(const std::string& path, const std::vector<FakeTensor>& tensors) {
  std::string header = "{\"__metadata__\": {\"format\": \"pt\"}";
  std::string data;
  for (const auto& t : tensors) {
    const std::uint64_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    const std::uint64_t end = data.size();
    std::string shape = "[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t.shape[i]);
    shape += "]";
    const auto offsets = t.offsets_override.value_or(std::make_pair(begin, end));
    header += ", \"" + t.name + "\": {\"dtype\": \"" + t.dtype + "\", \"shape\": " + t.shape_override.value_or(shape) +
              ", \"data_offsets\": [" + std::to_string(offsets.first) + ", " + std::to_string(offsets.second) + "]}";
  }
  header += "}";
  while (header.size() % 8) header += ' ';  // the format pads the header to 8 bytes
  std::string bytes(8, '\0');
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  writeRaw(path, bytes + header + data);
}

}  // namespace computron::model::testing_support
