#include "runtime/model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/json_reader.h"

namespace computron::model {
namespace {

[[noreturn]] void fail(const std::string& file, const std::string& message) {
  throw CheckpointError(file + ": " + message);
}

// Parses a safetensors dtype name; returns false for dtypes we do not compute in.
bool parseDtype(const std::string& name, DType& out) {
  if (name == "F16") { out = DType::kF16; return true; }
  if (name == "BF16") { out = DType::kBF16; return true; }
  if (name == "F32") { out = DType::kF32; return true; }
  return false;
}

bool isKnownSafetensorsDtype(const std::string& name) {
  static const char* kKnown[] = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
                                 "F64", "F8_E4M3", "F8_E5M2", "F16", "BF16", "F32"};
  return std::any_of(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return name == k; });
}

}  // namespace

int elementBytes(DType dtype) {
  switch (dtype) {
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kF32: return 4;
  }
  return 0;
}

const char* safetensorsDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF32: return "F32";
  }
  return "?";
}

std::int64_t TensorInfo::elements() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shapeToString(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string TensorInfo::shapeString() const { return shapeToString(shape); }

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::string path, int fd, std::uint64_t file_bytes)
    : path_(std::move(path)), fd_(fd), file_bytes_(file_bytes) {}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile(path, fd, static_cast<std::uint64_t>(st.st_size)));
  file->parseHeader();
  return file;
}

// Reads exactly dest.size() bytes at `offset`; a short read means the file was truncated.
static void preadExactly(int fd, const std::string& path, std::uint64_t offset, std::span<std::byte> dest) {
  std::size_t done = 0;
  while (done < dest.size()) {
    ssize_t n = ::pread(fd, dest.data() + done, dest.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, std::string("read failed: ") + std::strerror(errno));
    if (n == 0) fail(path, "truncated: file ended at byte " + std::to_string(offset + done) + " while reading");
    done += static_cast<std::size_t>(n);
  }
}

void SafetensorsFile::parseHeader() {
  if (file_bytes_ < 8) fail(path_, "truncated: " + std::to_string(file_bytes_) + " bytes, shorter than the 8-byte header length");
  std::byte length_bytes[8];
  preadExactly(fd_, path_, 0, length_bytes);
  std::uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | std::to_integer<std::uint64_t>(length_bytes[i]);
  if (header_bytes > kMaxSafetensorsHeaderBytes)
    fail(path_, "header of " + std::to_string(header_bytes) + " bytes is over the " +
                    std::to_string(kMaxSafetensorsHeaderBytes) + "-byte limit (corrupt or not a safetensors file)");
  if (header_bytes > file_bytes_ - 8)
    fail(path_, "truncated: header says " + std::to_string(header_bytes) + " bytes but only " +
                    std::to_string(file_bytes_ - 8) + " follow");
  std::string header(header_bytes, '\0');
  preadExactly(fd_, path_, 8, std::as_writable_bytes(std::span<char>(header.data(), header.size())));

  nlohmann::json root;
  try {
    root = parseJsonText(header, "header");  // depth-limited, a tensor named twice refused
  } catch (const ConfigError& e) {
    fail(path_, std::string("invalid header JSON: ") + e.what());
  }
  if (!root.is_object()) fail(path_, "invalid header: expected a JSON object");

  const std::uint64_t data_start = 8 + header_bytes;
  const std::uint64_t data_bytes = file_bytes_ - data_start;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const auto& entry = it.value();
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail(path_, "invalid header: " + where + " needs dtype, shape and data_offsets");
    const auto& dtype = entry["dtype"];
    const auto& shape = entry["shape"];
    const auto& offsets = entry["data_offsets"];
    if (!dtype.is_string()) fail(path_, "invalid header: " + where + " dtype is not a string");
    if (!shape.is_array()) fail(path_, "invalid header: " + where + " shape is not an array");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      fail(path_, "invalid header: " + where + " data_offsets must be two non-negative integers");

    TensorInfo info;
    info.name = name;
    info.file = path_;
    const std::string dtype_name = dtype.get<std::string>();
    if (!parseDtype(dtype_name, info.dtype)) {
      if (!isKnownSafetensorsDtype(dtype_name)) fail(path_, "invalid header: " + where + " has unknown dtype " + dtype_name);
      unsupported_.emplace(name, dtype_name);
      continue;  // allowed to exist (e.g. integer buffers); an error only when asked for
    }
    // Element count with overflow checks: shapes come from an untrusted file.
    std::uint64_t elements = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) fail(path_, "invalid header: " + where + " shape has a non-integer or negative dimension");
      std::uint64_t dim = d.get<std::uint64_t>();
      if (dim != 0 && elements > (std::uint64_t{1} << 62) / dim) fail(path_, "invalid header: " + where + " shape is too large");
      elements *= dim;
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const std::uint64_t begin = offsets[0].get<std::uint64_t>();
    const std::uint64_t end = offsets[1].get<std::uint64_t>();
    if (end < begin) fail(path_, "invalid header: " + where + " data_offsets end before they begin");
    if (end > data_bytes)
      fail(path_, where + " data [" + std::to_string(begin) + ", " + std::to_string(end) +
                      ") lies outside the file's " + std::to_string(data_bytes) + " data bytes (truncated file?)");
    const std::uint64_t expected = elements * static_cast<std::uint64_t>(elementBytes(info.dtype));
    if (end - begin != expected)
      fail(path_, where + " holds " + std::to_string(end - begin) + " bytes but shape " + info.shapeString() + " of " +
                      dtype_name + " needs " + std::to_string(expected));
    info.data_begin = data_start + begin;
    info.data_bytes = end - begin;
    tensors_.emplace(name, std::move(info));
  }

  // Overlapping tensors mean a corrupt or hostile file: two names would alias the same bytes.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, info] : tensors_)
    if (info.data_bytes > 0) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data_begin < b->data_begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    if (by_offset[i]->data_begin < prev.data_begin + prev.data_bytes)
      fail(path_, "tensors '" + prev.name + "' and '" + by_offset[i]->name + "' overlap in the file");
  }
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const std::string* SafetensorsFile::unsupportedDtype(const std::string& name) const {
  auto it = unsupported_.find(name);
  return it == unsupported_.end() ? nullptr : &it->second;
}

void SafetensorsFile::read(const TensorInfo& tensor, std::uint64_t offset, std::span<std::byte> dest) const {
  if (offset > tensor.data_bytes || dest.size() > tensor.data_bytes - offset)
    fail(path_, "read of " + std::to_string(dest.size()) + " bytes at " + std::to_string(offset) + " is outside tensor '" +
                    tensor.name + "' (" + std::to_string(tensor.data_bytes) + " bytes)");
  preadExactly(fd_, path_, tensor.data_begin + offset, dest);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint Checkpoint::open(const std::string& path) {
  namespace fs = std::filesystem;
  Checkpoint ckpt;
  ckpt.source_ = path;
  std::vector<std::string> file_paths;
  std::map<std::string, std::string> index_map;  // tensor -> file, when an index exists
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    const fs::path single = fs::path(path) / "model.safetensors";
    if (fs::exists(index)) {
      nlohmann::json root;
      try {
        root = readJsonFile(index.string());  // bounded in size and depth
      } catch (const ConfigError& e) {
        fail(index.string(), std::string("invalid JSON: ") + e.what());
      }
      if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object())
        fail(index.string(), "expected an object with a weight_map object");
      for (auto it = root["weight_map"].begin(); it != root["weight_map"].end(); ++it) {
        if (!it.value().is_string()) fail(index.string(), "weight_map['" + it.key() + "'] is not a file name");
        const std::string file = it.value().get<std::string>();
        if (file.find('/') != std::string::npos || file == "..")
          fail(index.string(), "weight_map['" + it.key() + "'] names a file outside the folder: " + file);
        index_map[it.key()] = (fs::path(path) / file).string();
        if (std::find(file_paths.begin(), file_paths.end(), index_map[it.key()]) == file_paths.end())
          file_paths.push_back(index_map[it.key()]);
      }
    } else if (fs::exists(single)) {
      file_paths.push_back(single.string());
    } else {
      fail(path, "no model.safetensors or model.safetensors.index.json in this folder");
    }
  } else if (fs::exists(path, ec)) {
    file_paths.push_back(path);
  } else {
    fail(path, "no such file or folder");
  }

  for (const auto& fp : file_paths) ckpt.files_.push_back(SafetensorsFile::open(fp));
  for (const auto& file : ckpt.files_) {
    for (const auto& [name, info] : file->tensors()) {
      if (!index_map.empty()) {
        auto it = index_map.find(name);
        if (it == index_map.end() || it->second != file->path()) continue;  // the index decides
      }
      if (ckpt.by_name_.count(name)) fail(file->path(), "tensor '" + name + "' appears in more than one file");
      ckpt.by_name_[name] = &info;
      ckpt.owner_[name] = file;
    }
    for (const auto& [name, dtype] : file->unsupportedTensors()) ckpt.unsupported_[name] = dtype;
  }
  for (const auto& [name, file] : index_map) {
    if (!ckpt.by_name_.count(name) && !ckpt.unsupported_.count(name))
      fail(file, "the index lists tensor '" + name + "' in this file but the file does not hold it");
  }
  return ckpt;
}

bool Checkpoint::has(const std::string& name) const { return by_name_.count(name) > 0; }

const TensorInfo& Checkpoint::tensor(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) return *it->second;
  auto bad = unsupported_.find(name);
  if (bad != unsupported_.end())
    fail(source_, "tensor '" + name + "' has dtype " + bad->second + "; supported dtypes are F16, BF16 and F32");
  fail(source_, "missing tensor '" + name + "'");
}

const TensorInfo& Checkpoint::tensor(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
  const TensorInfo& info = tensor(name);
  if (info.shape != expected_shape)
    fail(info.file, "tensor '" + name + "' has shape " + info.shapeString() + ", expected " + shapeToString(expected_shape));
  return info;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : by_name_) out.push_back(name);
  return out;
}

void Checkpoint::readBlock(const TensorInfo& tensor, std::int64_t row_begin, std::int64_t rows, std::int64_t col_begin,
                           std::int64_t cols, DType dtype, std::span<std::byte> dest) const {
  const std::int64_t total_rows = tensor.shape.empty() ? 1 : tensor.shape[0];
  const std::int64_t total_cols = tensor.shape.size() >= 2 ? tensor.shape[1] : 1;
  if (tensor.shape.size() > 2) fail(tensor.file, "tensor '" + tensor.name + "' has more than 2 dimensions");
  if (row_begin < 0 || rows < 0 || row_begin + rows > total_rows || col_begin < 0 || cols < 0 || col_begin + cols > total_cols)
    fail(tensor.file, "block outside tensor '" + tensor.name + "' " + tensor.shapeString());
  const std::size_t out_elem = static_cast<std::size_t>(elementBytes(dtype));
  if (dest.size() != static_cast<std::size_t>(rows * cols) * out_elem)
    fail(tensor.file, "destination of " + std::to_string(dest.size()) + " bytes does not fit the block of tensor '" +
                          tensor.name + "'");
  auto file_it = owner_.find(tensor.name);
  if (file_it == owner_.end()) fail(source_, "tensor '" + tensor.name + "' is not part of this checkpoint");
  const SafetensorsFile& file = *file_it->second;
  const std::size_t in_elem = static_cast<std::size_t>(elementBytes(tensor.dtype));
  const bool convert = tensor.dtype != dtype;
  std::vector<std::byte> staging;

  // Whole rows are contiguous: one read for the block. Otherwise one read per row.
  const bool contiguous = cols == total_cols;
  const std::int64_t pieces = contiguous ? 1 : rows;
  const std::size_t piece_elems = static_cast<std::size_t>(contiguous ? rows * cols : cols);
  for (std::int64_t p = 0; p < pieces; ++p) {
    const std::uint64_t offset = (static_cast<std::uint64_t>(row_begin + p) * total_cols + col_begin) * in_elem;
    std::span<std::byte> out = dest.subspan(static_cast<std::size_t>(p) * piece_elems * out_elem, piece_elems * out_elem);
    if (!convert) {
      file.read(tensor, offset, out);
    } else {
      staging.resize(piece_elems * in_elem);
      file.read(tensor, offset, staging);
      convertElements(tensor.dtype, staging, dtype, out);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Conversions (round to nearest even, like the GPU's conversions)

float halfToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1f;
  std::uint32_t mantissa = h & 0x3ff;
  std::uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400) == 0) { mantissa <<= 1; --exponent; }
      mantissa &= 0x3ff;
      bits = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t floatToHalf(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00);  // rounds to infinity
  if (abs < 0x38800000u) {  // subnormal or zero in half
    const float magnitude = std::bit_cast<float>(abs);
    // 2^-24 is the smallest half subnormal; nearbyint-style rounding through float arithmetic.
    const float scaled = magnitude * 16777216.0f;  // in units of 2^-24
    std::uint32_t q = static_cast<std::uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  const std::uint32_t exponent = ((abs >> 23) - 127 + 15);
  std::uint32_t mantissa = abs & 0x7fffff;
  std::uint32_t half = (exponent << 10) | (mantissa >> 13);
  const std::uint32_t rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

float bf16ToFloat(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

std::uint16_t floatToBf16(float f) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<std::uint16_t>(bits >> 16);
}

void convertElements(DType from, std::span<const std::byte> src, DType to, std::span<std::byte> dest) {
  const std::size_t n = src.size() / static_cast<std::size_t>(elementBytes(from));
  if (dest.size() != n * static_cast<std::size_t>(elementBytes(to)))
    throw CheckpointError("convertElements: destination size does not match");
  auto load = [&](std::size_t i) -> float {
    if (from == DType::kF32) { float v; std::memcpy(&v, src.data() + 4 * i, 4); return v; }
    std::uint16_t v;
    std::memcpy(&v, src.data() + 2 * i, 2);
    return from == DType::kF16 ? halfToFloat(v) : bf16ToFloat(v);
  };
  for (std::size_t i = 0; i < n; ++i) {
    const float v = load(i);
    if (to == DType::kF32) {
      std::memcpy(dest.data() + 4 * i, &v, 4);
    } else {
      const std::uint16_t h = to == DType::kF16 ? floatToHalf(v) : floatToBf16(v);
      std::memcpy(dest.data() + 2 * i, &h, 2);
    }
  }
}

}  // namespace computron::model
