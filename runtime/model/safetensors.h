// Reading Hugging Face safetensors checkpoints straight into caller-owned host memory.
//
// A safetensors file is: an unsigned 64-bit little-endian header length N, N bytes of JSON
// (`{"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
// offsets relative to the end of the header), then the tensor bytes. A model folder holds one
// `model.safetensors` or several shards listed in `model.safetensors.index.json`.
//
// Every malformed input is reported as a CheckpointError naming the file and, where there is one,
// the tensor: nothing here aborts or reads outside the file or the destination.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/model_spec.h"
#include "common/types.h"

namespace computron::model {

class CheckpointError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

// Headers larger than this are refused: real checkpoints stay far below (a 70B model's header is
// a few hundred KB), and a corrupt length must not make us allocate gigabytes.
constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100ull * 1000 * 1000;

int elementBytes(DType dtype);
const char* safetensorsDtypeName(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF16;
  std::vector<std::int64_t> shape;
  std::uint64_t data_begin = 0;  // absolute offset in the file
  std::uint64_t data_bytes = 0;
  std::string file;              // path of the file holding it

  std::int64_t elements() const;
  std::string shapeString() const;  // "[4096, 11008]"
};

// One .safetensors file: the parsed header and an open descriptor for reads.
class SafetensorsFile {
 public:
  // Parses and validates the header; throws CheckpointError on anything malformed.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  // Tensors of dtypes we do not compute in (I64 buffers, F8...): name -> dtype. Asking the
  // Checkpoint for one of them is an error naming its dtype.
  const std::map<std::string, std::string>& unsupportedTensors() const { return unsupported_; }
  const std::string* unsupportedDtype(const std::string& name) const;

  // Copies `dest.size()` bytes starting `offset` bytes into the tensor's data.
  void read(const TensorInfo& tensor, std::uint64_t offset, std::span<std::byte> dest) const;

 private:
  SafetensorsFile(std::string path, int fd, std::uint64_t file_bytes);
  void parseHeader();
  std::string path_;
  int fd_ = -1;
  std::uint64_t file_bytes_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> unsupported_;
};

// A model folder (or a single file): one name space of tensors over one or more files.
class Checkpoint {
 public:
  // `path` is a folder holding model.safetensors or model.safetensors.index.json (and the shards
  // it names), or a path to one .safetensors file.
  static Checkpoint open(const std::string& path);

  bool has(const std::string& name) const;
  // The tensor, checked to have `expected_shape` and one of the float dtypes. Throws naming the
  // tensor when it is missing or shaped differently.
  const TensorInfo& tensor(const std::string& name, const std::vector<std::int64_t>& expected_shape) const;
  const TensorInfo& tensor(const std::string& name) const;
  std::vector<std::string> names() const;

  // Reads rows [row_begin, row_begin + rows) and columns [col_begin, col_begin + cols) of a
  // 1-D or 2-D tensor (1-D: rows of one element), converting to `dtype`, into `dest`, which must
  // be exactly rows * cols * elementBytes(dtype) bytes. Contiguous ranges are one read.
  void readBlock(const TensorInfo& tensor, std::int64_t row_begin, std::int64_t rows, std::int64_t col_begin,
                 std::int64_t cols, DType dtype, std::span<std::byte> dest) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> owner_;
  std::map<std::string, std::string> unsupported_;  // name -> dtype
};

// Element conversion between the checkpoint's dtype and the model's (F32 <-> F16 <-> BF16).
std::string shapeToString(const std::vector<std::int64_t>& shape);
void convertElements(DType from, std::span<const std::byte> src, DType to, std::span<std::byte> dest);
float halfToFloat(std::uint16_t h);
std::uint16_t floatToHalf(float f);
float bf16ToFloat(std::uint16_t b);
std::uint16_t floatToBf16(float f);

}  // namespace computron::model
