#include "common/json_reader.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
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
  if (it == value_->end()) return std::nullopt;
  if (it->is_null()) throw ConfigError(path_ + "." + key + ": null is not a value here (leave the key out for its default)");
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
  if (value_->is_number_unsigned() && value_->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    fail("integer too large (" + value_->dump() + ")");
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

namespace {

std::string formatBound(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Builds the document through nlohmann's DOM builder while refusing nesting deeper than
// kMaxJsonDepth and keys repeated within one object; the JSON path of the place is kept so the
// message can name it.
class StrictDomBuilder {
 public:
  using json = nlohmann::json;
  explicit StrictDomBuilder(json& root) : dom_(root, /*allow_exceptions=*/false) {}

  bool null() { return value() && dom_.null(); }
  bool boolean(bool v) { return value() && dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return value() && dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return value() && dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& text) { return value() && dom_.number_float(v, text); }
  bool string(json::string_t& v) { return value() && dom_.string(v); }
  bool binary(json::binary_t& v) { return value() && dom_.binary(v); }
  bool start_object(std::size_t n) { return value() && open(true) && dom_.start_object(n); }
  bool start_array(std::size_t n) { return value() && open(false) && dom_.start_array(n); }
  bool end_object() { return close() && dom_.end_object(); }
  bool end_array() { return close() && dom_.end_array(); }
  bool key(json::string_t& k) {
    Frame& frame = frames_.back();
    frame.key = k;
    if (!frame.keys.insert(k).second) return refuse("duplicate key (each key may appear once in an object)");
    return dom_.key(k);
  }
  template <class Exception>
  bool parse_error(std::size_t byte, const std::string& /*token*/, const Exception& e) {
    syntax_byte_ = byte;
    syntax_error_ = e.what();
    return false;
  }

  // Set after a failed parse: either a syntax error at a byte, or a structural refusal.
  std::size_t syntaxByte() const { return syntax_byte_; }
  const std::string& syntaxError() const { return syntax_error_; }
  const std::string& refusal() const { return refusal_; }

 private:
  struct Frame {
    bool object = false;
    std::size_t index = 0;  // arrays: the next element's index
    std::string key;        // objects: the current key
    std::set<std::string> keys;
  };

  // A value starts: in an array it takes the next index.
  bool value() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().index;
    return true;
  }
  bool open(bool object) {
    if (static_cast<int>(frames_.size()) >= kMaxJsonDepth)
      return refuse("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    frames_.push_back(Frame{object, 0, {}, {}});
    return true;
  }
  bool close() {
    frames_.pop_back();
    return true;
  }
  bool refuse(const std::string& message) {
    std::string path = "$";
    for (const Frame& f : frames_)
      path += f.object ? "." + f.key : "[" + std::to_string(f.index == 0 ? 0 : f.index - 1) + "]";
    refusal_ = path + ": " + message;
    return false;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  std::vector<Frame> frames_;
  std::size_t syntax_byte_ = 0;
  std::string syntax_error_;
  std::string refusal_;
};

}  // namespace

double JsonReader::asDoubleIn(double lo, double hi) const {
  const double v = asDouble();
  if (v < lo || v > hi) fail("must be between " + formatBound(lo) + " and " + formatBound(hi) + ", got " + formatBound(v));
  return v;
}

std::int64_t JsonReader::asIntIn(std::int64_t lo, std::int64_t hi) const {
  const std::int64_t v = asInt();
  if (v < lo || v > hi)
    fail("must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + std::to_string(v));
  return v;
}

double JsonReader::getDoubleIn(const std::string& key, double fallback, double lo, double hi) const {
  auto v = find(key);
  return v ? v->asDoubleIn(lo, hi) : fallback;
}

std::int64_t JsonReader::getIntIn(const std::string& key, std::int64_t fallback, std::int64_t lo,
                                  std::int64_t hi) const {
  auto v = find(key);
  return v ? v->asIntIn(lo, hi) : fallback;
}

nlohmann::json parseJsonText(const std::string& text, const std::string& name) {
  nlohmann::json root;
  StrictDomBuilder builder(root);
  if (nlohmann::json::sax_parse(text, &builder, nlohmann::json::input_format_t::json, /*strict=*/true)) return root;
  if (!builder.refusal().empty()) throw JsonLimitError(name + ": " + builder.refusal());
  // Translate the byte offset into line:column.
  const std::size_t byte = builder.syntaxByte();
  std::size_t pos = std::min<std::size_t>(byte == 0 ? 0 : byte - 1, text.size());
  std::size_t line = 1 + static_cast<std::size_t>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(pos), '\n'));
  std::size_t last_nl = pos == 0 ? std::string::npos : text.rfind('\n', pos - 1);
  std::size_t col = last_nl == std::string::npos ? pos + 1 : pos - last_nl;
  const std::string& what = builder.syntaxError();
  auto p = what.find("parse error");
  if (p == std::string::npos) p = what.find("number overflow");
  throw ConfigError(name + ":" + std::to_string(line) + ":" + std::to_string(col) + ": invalid JSON (" +
                    (p == std::string::npos ? what : what.substr(p)) + ")");
}

nlohmann::json readJsonFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path + ": is a folder, not a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open file");
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxJsonFileBytes)
      throw ConfigError(path + ": larger than " + std::to_string(kMaxJsonFileBytes >> 20) + " MiB");
  }
  if (in.bad()) throw ConfigError(path + ": cannot read file");
  return parseJsonText(text, path);
}

void applyOverride(nlohmann::json& root, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected path=value, e.g. workload.cv=4");
  std::string path = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  if (assignment.size() > kMaxJsonFileBytes) throw ConfigError("--set: the assignment is too long");
  nlohmann::json value;
  StrictDomBuilder builder(value);
  if (!nlohmann::json::sax_parse(text, &builder, nlohmann::json::input_format_t::json, /*strict=*/true)) {
    // Not JSON: taken as a string, unless it is JSON that breaks a limit (too deep, a duplicate
    // key, a number out of range), which is reported.
    if (!builder.refusal().empty()) throw ConfigError("--set " + path + ": the value's " + builder.refusal());
    if (builder.syntaxError().find("number overflow") != std::string::npos)
      throw ConfigError("--set " + path + ": the value is a number out of range");
    value = text;
  }
  int depth = 0;
  nlohmann::json* node = &root;
  std::size_t i = 0;
  std::string walked = "$";
  while (i < path.size()) {
    if (++depth + 1 > kMaxJsonDepth) throw ConfigError("--set " + path + ": nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
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
  *node = std::move(value);
}

}  // namespace computron
