// Command-line entry points of the runtime, reached through the runtime module's
// computron_runtime_run (module_entry.cpp), which app/main.cpp loads on demand:
//   computron replay SCENARIO.json [--set k=v] [--device cuda|host] [--out DIR] ...
//   computron bench swap [...]
//   computron bench serve --url URL SCENARIO.json [...]
//   computron calibrate [SCENARIO.json] [--models ...] [--layouts ...] [--out PROFILE.json] ...
//   computron serve SCENARIO.json [--host H] [--port N] [--device cuda|host] [--api-key K] ...
// Each returns the process exit code (0 ok, 1 failure, 2 bad usage or configuration).
#pragma once

#include <algorithm>
#include <ctime>
#include <string>
#include <vector>

namespace computron::runtime {

int replayMain(int argc, char** argv);     // argv[0] is "replay"
int benchMain(int argc, char** argv);      // argv[0] is "bench"; dispatches "bench swap"
int benchSwapMain(int argc, char** argv);  // argv[0] is "swap"
int benchServeMain(int argc, char** argv); // argv[0] is "serve" (the load generator)
int serveMain(int argc, char** argv);      // argv[0] is "serve" (runtime/server/, docs/serving.md)
int calibrateMain(int argc, char** argv);  // argv[0] is "calibrate" (docs/specs.md, "Profiles")

// The exit code of bad usage or configuration.
inline constexpr int kExitUsage = 2;

// The median of `v`: its middle value, or the mean of the two middle ones; 0 when empty.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The mean of `v`; 0 when empty.
inline double mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// The current time in UTC as strftime `format` writes it (results and profiles carry their date).
inline std::string utcNow(const char* format) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  return std::string(buf, std::strftime(buf, sizeof buf, format, &tm));
}

}  // namespace computron::runtime
