// Readers for request trace files: the Azure LLM inference CSV, Mooncake JSONL and our own
// replayable CSV (written by writeWorkloadCsv). Each reads the whole file (traces are at most
// tens of thousands of rows) and checks every row; a bad row throws ConfigError naming
// `file:line`, where `file` is the name the user wrote (not the resolved path).
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/types.h"

namespace computron {

struct TraceRecord {
  Nanos time = 0;  // Azure: offset from the first row; Mooncake: the timestamp; ours: arrival_ns
  std::int32_t prompt_tokens = 0;
  std::int32_t output_tokens = 0;
  ModelId model = -1;  // our CSV only; -1 where the trace names no model
};

// Where a trace lives and how errors should name it.
struct TraceFile {
  std::string path;  // what to open
  std::string name;  // what messages call it (the path as written in the scenario)
};

// Bounds: a line holds at most kMaxTraceLineBytes; token counts are at most kMaxRequestTokens;
// times (from the first row for Azure) at most kMaxInputTime.
constexpr std::size_t kMaxTraceLineBytes = 64 * 1024;

// `TIMESTAMP,ContextTokens,GeneratedTokens`, TIMESTAMP like `2023-11-16 18:17:03.9799600`.
// Times are offsets from the first row, exact to the nanosecond; rows must be in time order.
std::vector<TraceRecord> readAzureTrace(const TraceFile& file);

// One JSON object a line: {"timestamp": ms, "input_length": n, "output_length": n, ...}; other
// members (such as hash_ids) are ignored. Times are the timestamps as given (ms from the trace's
// origin); rows must be in time order.
std::vector<TraceRecord> readMooncakeTrace(const TraceFile& file);

// `id,model,arrival_ns,prompt_tokens,output_tokens` with model names from `models`.
std::vector<TraceRecord> readComputronTrace(const TraceFile& file, const std::vector<std::string>& models);

// The same readers on a stream already open (`name` is what messages call it); used by the
// fuzzing harnesses.
std::vector<TraceRecord> readAzureTrace(std::istream& in, const std::string& name);
std::vector<TraceRecord> readMooncakeTrace(std::istream& in, const std::string& name);
std::vector<TraceRecord> readComputronTrace(std::istream& in, const std::string& name,
                                            const std::vector<std::string>& models);

// Nanoseconds since 1970-01-01 00:00:00 of `YYYY-MM-DD HH:MM:SS[.fraction]` (up to 9 fraction
// digits, a space or `T` between date and time); nullopt if the text is not such a time.
std::optional<Nanos> parseCivilTime(std::string_view text);

}  // namespace computron
