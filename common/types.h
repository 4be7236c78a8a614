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

inline double toSeconds(Nanos t) { return static_cast<double>(t) / 1e9; }
inline double toMillis(Nanos t) { return static_cast<double>(t) / 1e6; }
inline Nanos secondsToNanos(double s) { return static_cast<Nanos>(s * 1e9 + (s >= 0 ? 0.5 : -0.5)); }

using ModelId = std::int32_t;
using GpuId = std::int32_t;
using RequestId = std::int64_t;
using BatchId = std::int64_t;

constexpr double kGB = 1e9;
constexpr std::int64_t kGiB = 1LL << 30;
constexpr std::int64_t kMiB = 1LL << 20;

// Bad user input (scenario, trace, config). The message names the place: a JSON path such as
// `models[1].tp`, or `file:line`. Command-line front ends turn it into exit code 2.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace computron
