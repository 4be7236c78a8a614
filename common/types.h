// Strong-ish scalar types shared by every layer: time, ids, errors.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace computron {

// All time in the project is int64 nanoseconds: exact, totally ordered, no float drift.
using Nanos = std::int64_t;
constexpr Nanos kNanosPerMicro = 1'000;
constexpr Nanos kNanosPerMilli = 1'000'000;
constexpr Nanos kNanosPerSecond = 1'000'000'000;

// Limits that keep every time a run forms far inside int64 nanoseconds (9.2e18 ns, 292 years).
// Validation caps each user-given time at kMaxInputTime (10^7 s, about 116 days), so sums of a
// few of them cannot overflow; conversions and sums of values that are not bounded that way
// saturate at kMaxNanos (2^62 ns, about 146 years) instead of wrapping.
constexpr Nanos kMaxNanos = Nanos{1} << 62;
constexpr Nanos kMaxInputTime = 10'000'000 * kNanosPerSecond;
constexpr double kMaxInputSeconds = 1e7;

inline double toSeconds(Nanos t) { return static_cast<double>(t) / 1e9; }
inline double toMillis(Nanos t) { return static_cast<double>(t) / 1e6; }
// Rounds to the nearest nanosecond; beyond +-kMaxNanos (or NaN) the result saturates.
inline Nanos secondsToNanos(double s) {
  const double ns = s * 1e9;
  if (!(ns < static_cast<double>(kMaxNanos))) return s != s ? 0 : kMaxNanos;  // also +inf; NaN gives 0
  if (!(ns > -static_cast<double>(kMaxNanos))) return -kMaxNanos;
  return static_cast<Nanos>(ns + (s >= 0 ? 0.5 : -0.5));
}
// a + b, saturating at +-kMaxNanos instead of overflowing.
inline Nanos addSaturating(Nanos a, Nanos b) {
  Nanos sum = 0;
  if (__builtin_add_overflow(a, b, &sum) || sum > kMaxNanos) return a < 0 && b < 0 ? -kMaxNanos : kMaxNanos;
  return sum < -kMaxNanos ? -kMaxNanos : sum;
}
// *product = a * b; false when that overflows.
inline bool multiplyChecked(std::int64_t a, std::int64_t b, std::int64_t* product) {
  return !__builtin_mul_overflow(a, b, product);
}

// Tokens of one request (prompt or output), in workloads and traces.
constexpr std::int32_t kMaxRequestTokens = 1 << 20;

using ModelId = std::int32_t;
using GpuId = std::int32_t;
using RequestId = std::int64_t;
using BatchId = std::int64_t;

constexpr double kGB = 1e9;
constexpr std::int64_t kGiB = 1LL << 30;
constexpr std::int64_t kMiB = 1LL << 20;

// Bad user input (scenario, trace, config). The message names the place: a JSON path such as
// `models[1].tp`, or `file:line`. Command-line front ends turn it into exit code 2.
// Control characters from the input (a NUL would cut the message short) are written as \xNN.
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(const std::string& message) : std::runtime_error(printable(message)) {}

  static std::string printable(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte < 0x20 && c != '\n' && c != '\t') {
        static constexpr char kHex[] = "0123456789abcdef";
        out += "\\x";
        out += kHex[byte >> 4];
        out += kHex[byte & 15];
      } else {
        out += c;
      }
    }
    return out;
  }
};

// JSON that breaks a reading limit (nesting depth, a key given twice): bad input like any other.
class JsonLimitError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

// An output file that could not be written whole (disk full, a folder in the way): exit code 1,
// the message names the path and the system's reason.
class OutputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace computron
