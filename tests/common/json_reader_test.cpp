// Limits of JSON reading and of time arithmetic: nesting depth, duplicate keys, numbers out of
// range, integers above int64, null, control characters in messages, saturating conversions.
#include <gtest/gtest.h>

#include <string>

#include "common/json_reader.h"
#include "common/types.h"
#include "tests/support/config_error.h"

namespace computron {
namespace {

std::string errorOf(const std::string& text) {
  return fakes::configErrorOf([&] { parseJsonText(text, "f.json"); });
}

TEST(JsonLimits, NestingBeyondTheLimitIsRefusedWithItsPath) {
  EXPECT_NO_THROW(parseJsonText(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']'), "f.json"));
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_NE(errorOf(deep).find("f.json: $[0][0]"), std::string::npos) << errorOf(deep);
  EXPECT_NE(errorOf(deep).find("nested deeper than 64 levels"), std::string::npos);
  EXPECT_NE(errorOf(R"({"a": [1, {"b": )" + std::string(70, '[')).find("f.json: $.a[1].b[0]"), std::string::npos)
      << errorOf(R"({"a": [1, {"b": )" + std::string(70, '['));
}

TEST(JsonLimits, DuplicateKeysAreRefused) {
  EXPECT_EQ(errorOf(R"({"models": [{"tp": 1, "tp": 2}]})"),
            "f.json: $.models[0].tp: duplicate key (each key may appear once in an object)");
  EXPECT_NO_THROW(parseJsonText(R"([{"tp": 1}, {"tp": 2}])", "f.json"));
}

TEST(JsonLimits, NumbersOutOfRangeNameLineAndColumn) {
  EXPECT_NE(errorOf("{\n  \"x\": 1e400}").find("f.json:2:"), std::string::npos) << errorOf("{\n  \"x\": 1e400}");
  EXPECT_NE(errorOf("[1,]").find("f.json:1:4: invalid JSON"), std::string::npos) << errorOf("[1,]");
}

TEST(JsonLimits, IntegersAboveInt64AndNullAreRefused) {
  const nlohmann::json doc = parseJsonText(R"({"big": 18446744073709551615, "none": null, "ok": 5})", "f");
  const JsonReader root(doc, "$");
  EXPECT_THROW(root.at("big").asInt(), ConfigError);
  EXPECT_THROW((void)root.find("none"), ConfigError);
  EXPECT_EQ(root.getIntIn("ok", 0, 1, 10), 5);
  EXPECT_EQ(root.getIntIn("absent", 3, 1, 10), 3);
  try {
    (void)root.getIntIn("ok", 0, 6, 10);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "$.ok: must be between 6 and 10, got 5");
  }
}

TEST(JsonLimits, OverridesKeepTheLimits) {
  nlohmann::json doc = nlohmann::json::object();
  EXPECT_THROW(applyOverride(doc, "x=" + std::string(100, '[') + std::string(100, ']')), ConfigError);
  std::string path = "a";
  for (int i = 0; i < 100; ++i) path += ".a";
  EXPECT_THROW(applyOverride(doc, path + "=1"), ConfigError);
  EXPECT_THROW(applyOverride(doc, "x=1e999"), ConfigError);
  EXPECT_THROW(applyOverride(doc, R"(x={"k":1,"k":2})"), ConfigError);
  applyOverride(doc, "name=$not json");
  EXPECT_EQ(doc["name"], "$not json");
}

TEST(Messages, ControlCharactersAreEscapedSoNothingIsCutShort) {
  const ConfigError e(std::string("key a\0b\x01 end", 12));
  EXPECT_EQ(std::string(e.what()), "key a\\x00b\\x01 end");
}

TEST(TimeArithmetic, ConversionsAndSumsSaturateInsteadOfOverflowing) {
  EXPECT_EQ(secondsToNanos(1.5), 1'500'000'000);
  EXPECT_EQ(secondsToNanos(-2), -2'000'000'000);
  EXPECT_EQ(secondsToNanos(1e300), kMaxNanos);
  EXPECT_EQ(secondsToNanos(-1e300), -kMaxNanos);
  EXPECT_EQ(secondsToNanos(1.0 / 0.0), kMaxNanos);
  EXPECT_EQ(addSaturating(kMaxNanos, kMaxNanos), kMaxNanos);
  EXPECT_EQ(addSaturating(INT64_MAX, 1), kMaxNanos);
  EXPECT_EQ(addSaturating(-kMaxNanos, -kMaxNanos), -kMaxNanos);
  EXPECT_EQ(addSaturating(3, 4), 7);
  std::int64_t product = 0;
  EXPECT_FALSE(multiplyChecked(INT64_MAX / 2, 3, &product));
  EXPECT_TRUE(multiplyChecked(1 << 20, 1 << 20, &product));
  EXPECT_EQ(product, std::int64_t{1} << 40);
}

}  // namespace
}  // namespace computron
