// Safetensors reader: round trips of hand-written files and a clear error for each kind of
// malformed file. Files are written into a fresh temporary folder by each test.
#include "runtime/model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "tests/model/safetensors_writer.h"

namespace computron::model {
namespace {

using testing_support::FakeTensor;
using testing_support::TempDir;
using testing_support::writeRaw;
using testing_support::writeSafetensors;

std::vector<std::byte> f32Bytes(const std::vector<float>& values) {
  std::vector<std::byte> out(values.size() * 4);
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::vector<std::byte> u16Bytes(const std::vector<std::uint16_t>& values) {
  std::vector<std::byte> out(values.size() * 2);
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// Expects `fn` to throw CheckpointError whose message contains `needle`.
template <typename Fn>
void expectError(Fn fn, const std::string& needle) {
  try {
    fn();
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message was: " << e.what();
  }
}

TEST(Safetensors, ReadsEachFloatDtypeAndConverts) {
  TempDir dir;
  const std::vector<float> values = {1.0f, -2.5f, 0.125f, 3.0f, 65504.0f, -0.0f};
  std::vector<std::uint16_t> halves, bf16s;
  for (float v : values) {
    halves.push_back(floatToHalf(v));
    bf16s.push_back(floatToBf16(v));
  }
  const std::string path = dir.path() + "/model.safetensors";
  writeSafetensors(path, {{"a", "F32", {2, 3}, f32Bytes(values)},
                          {"b", "F16", {6}, u16Bytes(halves)},
                          {"c", "BF16", {3, 2}, u16Bytes(bf16s)}});
  Checkpoint ckpt = Checkpoint::open(dir.path());
  EXPECT_EQ(ckpt.names().size(), 3u);
  const TensorInfo& a = ckpt.tensor("a", {2, 3});
  EXPECT_EQ(a.dtype, DType::kF32);

  // F32 -> F16, one row block.
  std::vector<std::uint16_t> row(3);
  ckpt.readBlock(a, 1, 1, 0, 3, DType::kF16, std::as_writable_bytes(std::span(row)));
  EXPECT_EQ(halfToFloat(row[0]), 3.0f);
  EXPECT_EQ(halfToFloat(row[1]), 65504.0f);

  // Column block (strided read) F16 -> F32 of a 1-D tensor read as rows of one element.
  std::vector<float> back(6);
  ckpt.readBlock(ckpt.tensor("b"), 0, 6, 0, 1, DType::kF32, std::as_writable_bytes(std::span(back)));
  for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(back[i], values[i]);

  // Column slice of a 2-D BF16 tensor: column 1 of [[1,-2.5],[0.125,3],[65504,-0]].
  std::vector<float> col(3);
  ckpt.readBlock(ckpt.tensor("c"), 0, 3, 1, 1, DType::kF32, std::as_writable_bytes(std::span(col)));
  EXPECT_EQ(col[0], -2.5f);
  EXPECT_EQ(col[1], 3.0f);
  EXPECT_EQ(col[2], -0.0f);
}

TEST(Safetensors, HalfConversionRoundsToNearestEven) {
  EXPECT_EQ(floatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(floatToHalf(1.0f + 1.0f / 2048), 0x3c00);  // exactly halfway: even stays
  EXPECT_EQ(floatToHalf(1.0f + 3.0f / 2048), 0x3c02);  // halfway: rounds up to even
  EXPECT_EQ(floatToHalf(1e6f), 0x7c00);                 // overflow to infinity
  EXPECT_EQ(halfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(floatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16ToFloat(0x4040), 3.0f);
}

TEST(Safetensors, ShardedCheckpointFollowsTheIndex) {
  TempDir dir;
  writeSafetensors(dir.path() + "/model-00001-of-00002.safetensors", {{"x", "F32", {2}, f32Bytes({1, 2})}});
  writeSafetensors(dir.path() + "/model-00002-of-00002.safetensors", {{"y", "F32", {1}, f32Bytes({7})}});
  writeRaw(dir.path() + "/model.safetensors.index.json",
           R"({"metadata": {"total_size": 12}, "weight_map": {"x": "model-00001-of-00002.safetensors",
               "y": "model-00002-of-00002.safetensors"}})");
  Checkpoint ckpt = Checkpoint::open(dir.path());
  float y = 0;
  ckpt.readBlock(ckpt.tensor("y", {1}), 0, 1, 0, 1, DType::kF32, std::as_writable_bytes(std::span(&y, 1)));
  EXPECT_EQ(y, 7.0f);
  EXPECT_TRUE(ckpt.has("x"));
}

TEST(Safetensors, IndexNamingATensorTheFileLacksIsAnError) {
  TempDir dir;
  writeSafetensors(dir.path() + "/a.safetensors", {{"x", "F32", {1}, f32Bytes({1})}});
  writeRaw(dir.path() + "/model.safetensors.index.json", R"({"weight_map": {"x": "a.safetensors", "z": "a.safetensors"}})");
  expectError([&] { Checkpoint::open(dir.path()); }, "lists tensor 'z'");
}

TEST(Safetensors, IndexNamingAFileOutsideTheFolderIsAnError) {
  TempDir dir;
  writeRaw(dir.path() + "/model.safetensors.index.json", R"({"weight_map": {"x": "../evil.safetensors"}})");
  expectError([&] { Checkpoint::open(dir.path()); }, "outside the folder");
}

TEST(Safetensors, MissingTensorIsNamed) {
  TempDir dir;
  writeSafetensors(dir.path() + "/model.safetensors", {{"x", "F32", {1}, f32Bytes({1})}});
  Checkpoint ckpt = Checkpoint::open(dir.path());
  expectError([&] { ckpt.tensor("model.layers.0.mlp.up_proj.weight"); }, "missing tensor 'model.layers.0.mlp.up_proj.weight'");
}

TEST(Safetensors, WrongShapeIsNamed) {
  TempDir dir;
  writeSafetensors(dir.path() + "/model.safetensors", {{"w", "F32", {2, 2}, f32Bytes({1, 2, 3, 4})}});
  Checkpoint ckpt = Checkpoint::open(dir.path());
  expectError([&] { ckpt.tensor("w", {4, 1}); }, "tensor 'w' has shape [2, 2], expected [4, 1]");
}

TEST(Safetensors, UnsupportedDtypeIsAnErrorWhenUsed) {
  TempDir dir;
  std::vector<std::byte> i64(16);
  writeSafetensors(dir.path() + "/model.safetensors", {{"ids", "I64", {2}, i64}, {"w", "F32", {1}, f32Bytes({1})}});
  Checkpoint ckpt = Checkpoint::open(dir.path());  // other tensors stay usable
  EXPECT_NO_THROW(ckpt.tensor("w"));
  expectError([&] { ckpt.tensor("ids"); }, "has dtype I64; supported dtypes are F16, BF16 and F32");
}

TEST(Safetensors, UnknownDtypeIsInvalid) {
  TempDir dir;
  writeSafetensors(dir.path() + "/model.safetensors", {{"w", "F17", {1}, std::vector<std::byte>(4)}});
  expectError([&] { Checkpoint::open(dir.path()); }, "unknown dtype F17");
}

TEST(Safetensors, TruncatedDataIsReported) {
  TempDir dir;
  const std::string path = dir.path() + "/model.safetensors";
  writeSafetensors(path, {{"w", "F32", {4}, f32Bytes({1, 2, 3, 4})}});
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 5);
  expectError([&] { Checkpoint::open(path); }, "outside the file");
}

TEST(Safetensors, FileShorterThanTheLengthFieldIsTruncated) {
  TempDir dir;
  writeRaw(dir.path() + "/model.safetensors", "abc");
  expectError([&] { Checkpoint::open(dir.path()); }, "truncated");
}

TEST(Safetensors, HeaderLongerThanTheFileIsTruncated) {
  TempDir dir;
  std::string bytes(8, '\0');
  bytes[0] = 100;  // says 100 header bytes follow; none do
  writeRaw(dir.path() + "/model.safetensors", bytes + "{}");
  expectError([&] { Checkpoint::open(dir.path()); }, "truncated: header says 100 bytes");
}

TEST(Safetensors, OversizedHeaderIsRefusedWithoutAllocating) {
  TempDir dir;
  std::string bytes(8, '\0');
  bytes[4] = 1;  // 2^32 bytes
  writeRaw(dir.path() + "/model.safetensors", bytes + "{}");
  expectError([&] { Checkpoint::open(dir.path()); }, "over the 100000000-byte limit");
}

TEST(Safetensors, InvalidHeaderJson) {
  TempDir dir;
  const std::string header = "{not json";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  writeRaw(dir.path() + "/model.safetensors", bytes + header);
  expectError([&] { Checkpoint::open(dir.path()); }, "invalid header JSON");
}

TEST(Safetensors, HeaderEntryWithoutOffsetsIsInvalid) {
  TempDir dir;
  const std::string header = R"({"w": {"dtype": "F32", "shape": [1]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  writeRaw(dir.path() + "/model.safetensors", bytes + header + "abcd");
  expectError([&] { Checkpoint::open(dir.path()); }, "needs dtype, shape and data_offsets");
}

TEST(Safetensors, NegativeDimensionIsInvalid) {
  TempDir dir;
  FakeTensor t{"w", "F32", {1}, f32Bytes({1})};
  t.shape_override = "[-1]";
  writeSafetensors(dir.path() + "/model.safetensors", {t});
  expectError([&] { Checkpoint::open(dir.path()); }, "non-integer or negative dimension");
}

TEST(Safetensors, OffsetsOutsideTheFile) {
  TempDir dir;
  FakeTensor t{"w", "F32", {1}, f32Bytes({1})};
  t.offsets_override = {{1000, 1004}};
  writeSafetensors(dir.path() + "/model.safetensors", {t});
  expectError([&] { Checkpoint::open(dir.path()); }, "tensor 'w' data [1000, 1004) lies outside the file");
}

TEST(Safetensors, OffsetsNotMatchingShapeTimesDtype) {
  TempDir dir;
  FakeTensor t{"w", "F32", {2}, f32Bytes({1, 2})};
  t.offsets_override = {{0, 4}};
  writeSafetensors(dir.path() + "/model.safetensors", {t});
  expectError([&] { Checkpoint::open(dir.path()); }, "holds 4 bytes but shape [2] of F32 needs 8");
}

TEST(Safetensors, OverlappingTensors) {
  TempDir dir;
  FakeTensor a{"a", "F32", {2}, f32Bytes({1, 2})};
  FakeTensor b{"b", "F32", {2}, f32Bytes({3, 4})};
  b.offsets_override = {{4, 12}};
  writeSafetensors(dir.path() + "/model.safetensors", {a, b});
  expectError([&] { Checkpoint::open(dir.path()); }, "overlap");
}

TEST(Safetensors, EndBeforeBegin) {
  TempDir dir;
  FakeTensor a{"a", "F32", {0}, {}};
  a.offsets_override = {{4, 0}};
  writeSafetensors(dir.path() + "/model.safetensors", {a, {"b", "F32", {1}, f32Bytes({1})}});
  expectError([&] { Checkpoint::open(dir.path()); }, "end before they begin");
}

TEST(Safetensors, MissingFolderOrFiles) {
  TempDir dir;
  expectError([&] { Checkpoint::open(dir.path()); }, "no model.safetensors");
  expectError([&] { Checkpoint::open(dir.path() + "/nope.safetensors"); }, "no such file");
}

TEST(Safetensors, RandomGarbageNeverCrashes) {
  TempDir dir;
  std::mt19937_64 rng(7);
  const std::string path = dir.path() + "/model.safetensors";
  writeSafetensors(path, {{"w", "F32", {4}, f32Bytes({1, 2, 3, 4})}});
  std::ifstream in(path, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bad[rng() % bad.size()] = static_cast<char>(rng());
    if (trial % 3 == 0) bad.resize(rng() % bad.size());
    writeRaw(path, bad);
    try {
      Checkpoint ckpt = Checkpoint::open(path);
      for (const auto& name : ckpt.names()) {
        const TensorInfo& t = ckpt.tensor(name);
        if (t.shape.size() > 2) continue;
        std::vector<std::byte> out(static_cast<std::size_t>(t.elements()) * 4);
        const std::int64_t rows = t.shape.empty() ? 1 : t.shape[0];
        const std::int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
        ckpt.readBlock(t, 0, rows, 0, cols, DType::kF32, out);
      }
    } catch (const CheckpointError&) {
      // Expected for most corruptions; anything else (crash, other exception) fails the test.
    }
  }
}

}  // namespace
}  // namespace computron::model
