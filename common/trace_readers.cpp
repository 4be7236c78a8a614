#include "common/trace_readers.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "common/json_reader.h"

namespace computron {
namespace {

constexpr std::int64_t kMaxTokens = kMaxRequestTokens;

// Opens a trace file; a missing one names the path as written and where it was looked for.
std::ifstream openTrace(const TraceFile& file) {
  std::error_code ec;
  if (std::filesystem::is_directory(file.path, ec)) throw ConfigError(file.name + ": is a folder, not a trace file");
  std::ifstream in(file.path, std::ios::binary);
  if (!in) {
    std::string where = file.path == file.name ? "" : " (looked for " + file.path + ")";
    throw ConfigError(file.name + ": cannot open file" + where);
  }
  return in;
}

// Reads a stream line by line, counting lines (from 1) so errors can name them. A line longer
// than kMaxTraceLineBytes is refused as soon as it is seen, not read whole.
class LineReader {
 public:
  LineReader(std::istream& in, std::string name) : in_(in), name_(std::move(name)) {}

  // Advances to the next line that is not blank; false at the end of the file.
  bool nextNonBlank() {
    while (readLine()) {
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();  // files written on Windows
      if (line_.find_first_not_of(" \t") != std::string::npos) return true;
    }
    if (in_.bad()) throw ConfigError(name_ + ": cannot read file");
    return false;
  }

  const std::string& line() const { return line_; }
  std::int64_t number() const { return number_; }
  const std::string& name() const { return name_; }

  [[noreturn]] void fail(const std::string& message) const {
    throw ConfigError(name_ + ":" + std::to_string(number_) + ": " + message);
  }

 private:
  bool readLine() {
    line_.clear();
    std::streambuf* buf = in_.rdbuf();
    int c = buf->sbumpc();
    if (c == std::char_traits<char>::eof()) return false;
    ++number_;
    while (c != std::char_traits<char>::eof() && c != '\n') {
      if (line_.size() == kMaxTraceLineBytes)
        fail("line longer than " + std::to_string(kMaxTraceLineBytes) + " bytes");
      line_ += static_cast<char>(c);
      c = buf->sbumpc();
    }
    return true;
  }

  std::istream& in_;
  std::string name_;
  std::string line_;
  std::int64_t number_ = 0;
};

[[noreturn]] void failEmpty(const LineReader& in) { throw ConfigError(in.name() + ": empty trace (no requests)"); }

std::string_view trim(std::string_view text) {
  auto begin = text.find_first_not_of(" \t");
  if (begin == std::string_view::npos) return {};
  auto end = text.find_last_not_of(" \t");
  return text.substr(begin, end - begin + 1);
}

std::vector<std::string_view> splitCsv(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t start = 0;
  while (true) {
    auto comma = line.find(',', start);
    fields.push_back(
        trim(line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
    if (comma == std::string_view::npos) return fields;
    start = comma + 1;
  }
}

// Reads the header line and checks it is exactly `expected`.
void expectHeader(LineReader& in, std::string_view expected) {
  if (!in.nextNonBlank()) failEmpty(in);
  if (trim(in.line()) != expected) in.fail("expected the header '" + std::string(expected) + "'");
}

std::optional<std::int64_t> parseInteger(std::string_view text) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::int64_t integerColumn(const LineReader& in, std::string_view column, std::string_view text) {
  auto value = parseInteger(text);
  if (!value) in.fail("bad " + std::string(column) + " '" + std::string(text) + "' (expected an integer)");
  return *value;
}

std::int32_t checkedTokens(const LineReader& in, std::string_view column, std::int64_t value) {
  if (value < 0) in.fail(std::string(column) + " is negative (" + std::to_string(value) + ")");
  if (value > kMaxTokens) in.fail(std::string(column) + " is too large (" + std::to_string(value) + ")");
  return static_cast<std::int32_t>(value);
}

std::int32_t tokenColumn(const LineReader& in, std::string_view column, std::string_view text) {
  return checkedTokens(in, column, integerColumn(in, column, text));
}

// Rejects a row earlier than the one before it; traces are replayed in file order.
class OrderCheck {
 public:
  void check(const LineReader& in, Nanos time) {
    if (previous_line_ > 0 && time < previous_time_)
      in.fail("out of order: timestamp is earlier than the previous row's (line " + std::to_string(previous_line_) +
              ")");
    previous_time_ = time;
    previous_line_ = in.number();
  }

 private:
  Nanos previous_time_ = 0;
  std::int64_t previous_line_ = 0;
};

const nlohmann::json& field(const LineReader& in, const nlohmann::json& row, const std::string& key) {
  auto it = row.find(key);
  if (it == row.end()) in.fail("missing field \"" + key + "\"");
  return *it;
}

std::int32_t jsonTokens(const LineReader& in, const nlohmann::json& row, const std::string& key) {
  const auto& value = field(in, row, key);
  std::string column = "\"" + key + "\"";
  if (!value.is_number_integer()) in.fail(column + " must be an integer");
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxTokens))
    in.fail(column + " is too large (" + value.dump() + ")");
  return checkedTokens(in, column, value.get<std::int64_t>());
}

Nanos mooncakeTime(const LineReader& in, const nlohmann::json& row) {
  const auto& value = field(in, row, "timestamp");
  if (!value.is_number()) in.fail("\"timestamp\" must be a number (milliseconds)");
  double ms = value.get<double>();
  if (ms < 0) in.fail("\"timestamp\" is negative (" + value.dump() + ")");
  if (!(ms <= kMaxInputSeconds * 1e3))
    in.fail("\"timestamp\" is too large (" + value.dump() + " ms; at most " + std::to_string(kMaxInputTime / kNanosPerMilli) + ")");
  if (value.is_number_unsigned()) return static_cast<Nanos>(value.get<std::uint64_t>()) * kNanosPerMilli;
  return std::llround(ms * static_cast<double>(kNanosPerMilli));
}

// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
std::int64_t daysFromCivil(std::int64_t year, int month, int day) {
  year -= month <= 2 ? 1 : 0;
  const std::int64_t era = (year >= 0 ? year : year - 399) / 400;
  const std::int64_t year_of_era = year - era * 400;
  const std::int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  const std::int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

int daysInMonth(std::int64_t year, int month) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : kDays[month - 1];
}

}  // namespace

std::optional<Nanos> parseCivilTime(std::string_view text) {
  // YYYY-MM-DD HH:MM:SS[.fraction]
  if (text.size() < 19) return std::nullopt;
  auto number = [&](std::size_t pos, std::size_t len) -> int {
    int value = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (text[i] < '0' || text[i] > '9') return -1;
      value = value * 10 + (text[i] - '0');
    }
    return value;
  };
  if (text[4] != '-' || text[7] != '-' || (text[10] != ' ' && text[10] != 'T') || text[13] != ':' || text[16] != ':')
    return std::nullopt;
  const int year = number(0, 4), month = number(5, 2), day = number(8, 2);
  const int hour = number(11, 2), minute = number(14, 2), second = number(17, 2);
  if (year < 1900 || year > 2200 || month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month) || hour < 0 ||
      hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59)
    return std::nullopt;

  Nanos fraction = 0;
  if (text.size() > 19) {
    const std::size_t digits = text.size() - 20;
    if (text[19] != '.' || digits < 1 || digits > 9) return std::nullopt;
    const int value = number(20, digits);
    if (value < 0) return std::nullopt;
    fraction = value;
    for (std::size_t i = digits; i < 9; ++i) fraction *= 10;
  }
  const std::int64_t seconds = ((daysFromCivil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second;
  return seconds * kNanosPerSecond + fraction;
}

std::vector<TraceRecord> readAzureTrace(const TraceFile& file) {
  std::ifstream stream = openTrace(file);
  return readAzureTrace(stream, file.name);
}

std::vector<TraceRecord> readMooncakeTrace(const TraceFile& file) {
  std::ifstream stream = openTrace(file);
  return readMooncakeTrace(stream, file.name);
}

std::vector<TraceRecord> readComputronTrace(const TraceFile& file, const std::vector<std::string>& models) {
  std::ifstream stream = openTrace(file);
  return readComputronTrace(stream, file.name, models);
}

std::vector<TraceRecord> readAzureTrace(std::istream& stream, const std::string& name) {
  LineReader in(stream, name);
  expectHeader(in, "TIMESTAMP,ContextTokens,GeneratedTokens");
  std::vector<TraceRecord> records;
  OrderCheck order;
  Nanos origin = 0;
  while (in.nextNonBlank()) {
    auto fields = splitCsv(in.line());
    if (fields.size() != 3) in.fail("expected 3 columns, got " + std::to_string(fields.size()));
    auto time = parseCivilTime(fields[0]);
    if (!time) in.fail("bad timestamp '" + std::string(fields[0]) + "' (expected YYYY-MM-DD HH:MM:SS.fffffff)");
    order.check(in, *time);
    if (records.empty()) origin = *time;
    TraceRecord record;
    // Years 1900-2200 span more than int64 nanoseconds hold, so the difference is checked.
    if (__builtin_sub_overflow(*time, origin, &record.time) || record.time > kMaxInputTime)
      in.fail("more than " + std::to_string(kMaxInputTime / kNanosPerSecond) + " s after the first row");
    record.prompt_tokens = tokenColumn(in, "ContextTokens", fields[1]);
    record.output_tokens = tokenColumn(in, "GeneratedTokens", fields[2]);
    records.push_back(record);
  }
  if (records.empty()) failEmpty(in);
  return records;
}

std::vector<TraceRecord> readMooncakeTrace(std::istream& stream, const std::string& name) {
  LineReader in(stream, name);
  std::vector<TraceRecord> records;
  OrderCheck order;
  while (in.nextNonBlank()) {
    nlohmann::json row;
    try {
      row = parseJsonText(in.line(), "row");
    } catch (const JsonLimitError& e) {
      in.fail(std::string("invalid JSON (") + e.what() + ")");
    } catch (const ConfigError&) {
      in.fail("invalid JSON");
    }
    if (!row.is_object()) in.fail("expected a JSON object");
    TraceRecord record;
    record.time = mooncakeTime(in, row);
    order.check(in, record.time);
    record.prompt_tokens = jsonTokens(in, row, "input_length");
    record.output_tokens = jsonTokens(in, row, "output_length");
    records.push_back(record);
  }
  if (records.empty()) failEmpty(in);
  return records;
}

std::vector<TraceRecord> readComputronTrace(std::istream& stream, const std::string& name,
                                            const std::vector<std::string>& models) {
  LineReader in(stream, name);
  expectHeader(in, "id,model,arrival_ns,prompt_tokens,output_tokens");
  std::unordered_map<std::string_view, ModelId> model_ids;  // the first model of each name
  for (std::size_t m = 0; m < models.size(); ++m) model_ids.emplace(models[m], static_cast<ModelId>(m));
  std::vector<TraceRecord> records;
  OrderCheck order;
  while (in.nextNonBlank()) {
    auto fields = splitCsv(in.line());
    if (fields.size() != 5) in.fail("expected 5 columns, got " + std::to_string(fields.size()));
    integerColumn(in, "id", fields[0]);  // ids are renumbered on replay; only the form is checked
    TraceRecord record;
    if (const auto it = model_ids.find(fields[1]); it != model_ids.end()) record.model = it->second;
    if (record.model < 0) {
      std::string known;
      for (std::size_t m = 0; m < models.size() && m < 20; ++m) known += (known.empty() ? "" : ", ") + models[m];
      if (models.size() > 20) known += ", ... (" + std::to_string(models.size()) + " in all)";
      in.fail("unknown model '" + std::string(fields[1]) + "' (scenario models: " + known + ")");
    }
    record.time = integerColumn(in, "arrival_ns", fields[2]);
    if (record.time < 0) in.fail("arrival_ns is negative (" + std::to_string(record.time) + ")");
    if (record.time > kMaxInputTime)
      in.fail("arrival_ns is too large (" + std::to_string(record.time) + "; at most " + std::to_string(kMaxInputTime) + ")");
    order.check(in, record.time);
    record.prompt_tokens = tokenColumn(in, "prompt_tokens", fields[3]);
    record.output_tokens = tokenColumn(in, "output_tokens", fields[4]);
    records.push_back(record);
  }
  if (records.empty()) failEmpty(in);
  return records;
}

}  // namespace computron
