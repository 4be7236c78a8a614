// The Hugging Face config.json reader on arbitrary bytes: a model spec whose sizes stay within
// int64, or a ConfigError naming the file and key.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/model_spec.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  static const std::filesystem::path file = [] {
    std::filesystem::create_directories(fuzz::scratchDir() / "model");
    return fuzz::scratchDir() / "model" / "config.json";
  }();
  fuzz::writeBytes(file, data, size);
  try {
    const ModelSpec m = modelFromHfConfig(file.string());
    if (m.totalBytes() <= 0 || m.totalParams() <= 0) std::abort();
    m.validateParallel(1, 1, "$");
  } catch (const ConfigError&) {
  }
  return 0;
}
