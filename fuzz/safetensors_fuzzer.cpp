// The safetensors reader on arbitrary bytes (no GPU): the header parsed and every tensor's first
// bytes read back, or a CheckpointError naming the file; nothing read outside the file.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.h"
#include "runtime/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  static const std::filesystem::path file = fuzz::scratchDir() / "model.safetensors";
  fuzz::writeBytes(file, data, size);
  try {
    const auto st = model::SafetensorsFile::open(file.string());
    std::vector<std::byte> buf(64);
    for (const auto& [name, tensor] : st->tensors()) {
      const std::uint64_t n = std::min<std::uint64_t>(tensor.data_bytes, buf.size());
      st->read(tensor, 0, std::span<std::byte>(buf.data(), n));
      (void)tensor.elements();
    }
  } catch (const ConfigError&) {
  }
  return 0;
}
