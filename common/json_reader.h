// Strict, path-aware reading of JSON configuration. Every error names the JSON path of the
// offending value (`$.models[1].tp: expected an integer, got string`), and objects are checked
// for unknown keys so typos never pass silently.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common/types.h"

namespace computron {

class JsonReader {
 public:
  JsonReader(const nlohmann::json& value, std::string path) : value_(&value), path_(std::move(path)) {}

  const nlohmann::json& json() const { return *value_; }
  const std::string& path() const { return path_; }

  [[noreturn]] void fail(const std::string& message) const;

  // Object access. `expectObject` rejects any key not in `allowed`.
  void expectObject(std::initializer_list<const char*> allowed) const;
  void expectObject(const std::vector<std::string>& allowed) const;
  bool isObject() const { return value_->is_object(); }
  bool isArray() const { return value_->is_array(); }
  bool isString() const { return value_->is_string(); }
  bool isNumber() const { return value_->is_number(); }
  bool has(const std::string& key) const;
  JsonReader at(const std::string& key) const;  // required member
  std::optional<JsonReader> find(const std::string& key) const;  // absent: nullopt; null is refused

  // Arrays.
  std::size_t size() const;  // requires array
  JsonReader at(std::size_t index) const;

  // Scalars (this node).
  std::string asString() const;
  double asDouble() const;
  std::int64_t asInt() const;
  bool asBool() const;

  // Members with defaults; a present member of the wrong type is an error.
  std::string getString(const std::string& key, const std::string& fallback) const;
  double getDouble(const std::string& key, double fallback) const;
  std::int64_t getInt(const std::string& key, std::int64_t fallback) const;
  bool getBool(const std::string& key, bool fallback) const;
  // Required members.
  std::string requireString(const std::string& key) const { return at(key).asString(); }
  double requireDouble(const std::string& key) const { return at(key).asDouble(); }
  std::int64_t requireInt(const std::string& key) const { return at(key).asInt(); }

  // Range checks that name this node's path.
  double positive(double v, const std::string& key) const;
  std::int64_t positiveInt(std::int64_t v, const std::string& key) const;
  // This node as a number (an integer) in [lo, hi]; outside, the message gives the range.
  double asDoubleIn(double lo, double hi) const;
  std::int64_t asIntIn(std::int64_t lo, std::int64_t hi) const;
  // Optional members, bounded: the fallback when absent, else the value checked against [lo, hi].
  double getDoubleIn(const std::string& key, double fallback, double lo, double hi) const;
  std::int64_t getIntIn(const std::string& key, std::int64_t fallback, std::int64_t lo, std::int64_t hi) const;

 private:
  static std::string typeName(const nlohmann::json& v);
  const nlohmann::json* value_;
  std::string path_;
};

// Limits on any JSON the program reads: nesting depth (deep documents would exhaust the stack
// when copied) and file size.
constexpr int kMaxJsonDepth = 64;
constexpr std::size_t kMaxJsonFileBytes = std::size_t{256} << 20;

// Parses JSON text strictly: a syntax error or a number out of double range names
// `name:line:column`; nesting deeper than kMaxJsonDepth and a key given twice in one object name
// `name: $.path`. Throws ConfigError.
nlohmann::json parseJsonText(const std::string& text, const std::string& name);

// Parses a JSON file (at most kMaxJsonFileBytes) with parseJsonText.
nlohmann::json readJsonFile(const std::string& path);

// Applies `path=value` overrides (`models[0].tp=2`, `workload.cv=4`, `seed=7`). The value is
// parsed as JSON when it parses, else taken as a string. A path through a missing array element
// is an error; a missing object key is created (so validation later rejects unknown keys).
void applyOverride(nlohmann::json& root, const std::string& assignment);

}  // namespace computron
