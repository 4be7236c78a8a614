#include "common/json_reader.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

namespace computron {

void JsonReader::fail(const std::string& message) const { throw ConfigError(path_ + ": " + message); }

std::string JsonReader::typeName(const nlohmann::json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  return v.type_name();
}

void JsonReader::expectObject(std::initializer_list<const char*> allowed) const {
  std::vector<std::string> keys(allowed.begin(), allowed.end());
  expectObject(keys);
}

void JsonReader::expectObject(const std::vector<std::string>& allowed) const {
  if (!value_->is_object()) fail("expected an object, got " + typeName(*value_));
  for (auto it = value_->begin(); it != value_->end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
      std::string list;
      for (const auto& k : allowed) list += (list.empty() ? "" : ", ") + k;
      throw ConfigError(path_ + "." + it.key() + ": unknown key (allowed: " + list + ")");
    }
  }
}

bool JsonReader::has(const std::string& key) const { return value_->is_object() && value_->contains(key); }

JsonReader JsonReader::at(const std::string& key) const {
  if (!value_->is_object()) fail("expected an object, got " + typeName(*value_));
  auto it = value_->find(key);
  if (it == value_->end()) throw ConfigError(path_ + "." + key + ": required key is missing");
  return JsonReader(*it, path_ + "." + key);
}

std::optional<JsonReader> JsonReader::find(const std::string& key) const {
  if (!value_->is_object()) fail("expected an object, got " + typeName(*value_));
  auto it = value_->find(key);
  if (it == value_->end() || it->is_null()) return std::nullopt;
  return JsonReader(*it, path_ + "." + key);
}

std::size_t JsonReader::size() const {
  if (!value_->is_array()) fail("expected an array, got " + typeName(*value_));
  return value_->size();
}

JsonReader JsonReader::at(std::size_t index) const {
  if (!value_->is_array()) fail("expected an array, got " + typeName(*value_));
  if (index >= value_->size()) fail("index " + std::to_string(index) + " out of range");
  return JsonReader((*value_)[index], path_ + "[" + std::to_string(index) + "]");
}

std::string JsonReader::asString() const {
  if (!value_->is_string()) fail("expected a string, got " + typeName(*value_));
  return value_->get<std::string>();
}

double JsonReader::asDouble() const {
  if (!value_->is_number()) fail("expected a number, got " + typeName(*value_));
  double v = value_->get<double>();
  if (!std::isfinite(v)) fail("expected a finite number");
  return v;
}

std::int64_t JsonReader::asInt() const {
  if (value_->is_number_integer()) return value_->get<std::int64_t>();
  if (value_->is_number_float()) {
    double v = value_->get<double>();
    if (std::floor(v) == v && std::fabs(v) < 9e15) return static_cast<std::int64_t>(v);
  }
  fail("expected an integer, got " + typeName(*value_));
}

bool JsonReader::asBool() const {
  if (!value_->is_boolean()) fail("expected true or false, got " + typeName(*value_));
  return value_->get<bool>();
}

std::string JsonReader::getString(const std::string& key, const std::string& fallback) const {
  auto v = find(key);
  return v ? v->asString() : fallback;
}
double JsonReader::getDouble(const std::string& key, double fallback) const {
  auto v = find(key);
  return v ? v->asDouble() : fallback;
}
std::int64_t JsonReader::getInt(const std::string& key, std::int64_t fallback) const {
  auto v = find(key);
  return v ? v->asInt() : fallback;
}
bool JsonReader::getBool(const std::string& key, bool fallback) const {
  auto v = find(key);
  return v ? v->asBool() : fallback;
}

double JsonReader::positive(double v, const std::string& key) const {
  if (!(v > 0)) throw ConfigError(path_ + "." + key + ": must be greater than 0");
  return v;
}
std::int64_t JsonReader::positiveInt(std::int64_t v, const std::string& key) const {
  if (v <= 0) throw ConfigError(path_ + "." + key + ": must be greater than 0");
  return v;
}

nlohmann::json readJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // Translate the byte offset into line:column.
    std::size_t pos = std::min<std::size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    std::size_t line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(pos), '\n');
    std::size_t last_nl = text.rfind('\n', pos == 0 ? 0 : pos - 1);
    std::size_t col = last_nl == std::string::npos ? pos + 1 : pos - last_nl;
    std::string what = e.what();
    auto p = what.find("parse error");
    throw ConfigError(path + ":" + std::to_string(line) + ":" + std::to_string(col) + ": invalid JSON (" +
                      (p == std::string::npos ? what : what.substr(p)) + ")");
  }
}

void applyOverride(nlohmann::json& root, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected path=value, e.g. workload.cv=4");
  std::string path = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error&) {
    value = text;
  }
  nlohmann::json* node = &root;
  std::size_t i = 0;
  std::string walked = "$";
  while (i < path.size()) {
    if (path[i] == '.') ++i;
    if (i < path.size() && path[i] == '[') {
      auto close = path.find(']', i);
      if (close == std::string::npos) throw ConfigError("--set " + path + ": missing ]");
      std::size_t idx = 0;
      try {
        idx = std::stoul(path.substr(i + 1, close - i - 1));
      } catch (...) {
        throw ConfigError("--set " + path + ": bad array index");
      }
      if (!node->is_array() || idx >= node->size())
        throw ConfigError("--set " + path + ": " + walked + "[" + std::to_string(idx) + "] does not exist");
      node = &(*node)[idx];
      walked += "[" + std::to_string(idx) + "]";
      i = close + 1;
      continue;
    }
    std::size_t end = path.find_first_of(".[", i);
    std::string key = path.substr(i, end == std::string::npos ? std::string::npos : end - i);
    if (key.empty()) throw ConfigError("--set " + path + ": empty key");
    if (node->is_null()) *node = nlohmann::json::object();
    if (!node->is_object()) throw ConfigError("--set " + path + ": " + walked + " is not an object");
    node = &(*node)[key];
    walked += "." + key;
    i = end == std::string::npos ? path.size() : end;
  }
  *node = value;
}

}  // namespace computron
