// The Jinja2 subset of chat templates: lexer (with Jinja's whitespace rules), recursive-descent
// parser into a small tree, and a bounded tree-walking renderer with Python's value semantics
// where templates depend on them. See chat_template.h for the supported subset.
#include "common/text/chat_template.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "common/text/utf8.h"

namespace computron::text {

ChatTemplateError::ChatTemplateError(Kind kind, const std::string& message, int line, int column)
    : std::runtime_error(line > 0 ? "chat template line " + std::to_string(line) + ", column " +
                                        std::to_string(column) + ": " + message
                                  : message),
      kind_(kind),
      line_(line),
      column_(column) {}

namespace {

using Kind = ChatTemplateError::Kind;

// ---------------------------------------------------------------------------------------------
// UTF-8 and Python's notion of whitespace.

// Decodes the code point at `pos` (invalid bytes decode as themselves) and advances `pos`.
std::uint32_t decodeUtf8(const std::string& s, std::size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  int extra = b0 >= 0xF0 ? 3 : b0 >= 0xE0 ? 2 : b0 >= 0xC0 ? 1 : 0;
  if (pos + static_cast<std::size_t>(extra) >= s.size()) extra = 0;
  if (extra == 0) {
    ++pos;
    return b0;
  }
  std::uint32_t cp = extra == 1 ? (b0 & 0x1F) : extra == 2 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k <= extra; ++k) {
    const auto b = static_cast<unsigned char>(s[pos + static_cast<std::size_t>(k)]);
    if ((b & 0xC0) != 0x80) {
      ++pos;
      return b0;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  pos += 1 + static_cast<std::size_t>(extra);
  return cp;
}


// Byte offsets where each code point starts, plus the end.
std::vector<std::size_t> codePointOffsets(const std::string& s) {
  std::vector<std::size_t> offsets;
  std::size_t pos = 0;
  while (pos < s.size()) {
    offsets.push_back(pos);
    decodeUtf8(s, pos);
  }
  offsets.push_back(s.size());
  return offsets;
}

std::size_t codePointCount(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Python's str.isspace.
bool isPySpace(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// str.strip() / lstrip() / rstrip(): whitespace, or the code points of `chars`.
std::string pyStrip(const std::string& s, bool left, bool right, const std::string* chars) {
  std::vector<std::uint32_t> set;
  if (chars != nullptr) {
    std::size_t p = 0;
    while (p < chars->size()) set.push_back(decodeUtf8(*chars, p));
  }
  auto strippable = [&](std::uint32_t cp) {
    return chars == nullptr ? isPySpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  const auto offsets = codePointOffsets(s);
  std::size_t first = 0;
  std::size_t last = offsets.size() - 1;  // code point count
  auto cpAt = [&](std::size_t idx) {
    std::size_t p = offsets[idx];
    return decodeUtf8(s, p);
  };
  if (left)
    while (first < last && strippable(cpAt(first))) ++first;
  if (right)
    while (last > first && strippable(cpAt(last - 1))) --last;
  return s.substr(offsets[first], offsets[last] - offsets[first]);
}

int toUpperAscii(int c) { return c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c; }
int toLowerAscii(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

bool isAsciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// ---------------------------------------------------------------------------------------------
// Values.

enum class Builtin { RaiseException, StrftimeNow, Range, Namespace, Dict };

struct Value;
using Seq = std::vector<Value>;  // a list's items
using ListPtr = std::shared_ptr<const Seq>;

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
};
using DictPtr = std::shared_ptr<const Dict>;

struct Namespace {
  Dict attrs;
};

struct Value {
  enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function, Method };
  Type type = Type::Undefined;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string str;  // String; Undefined: what was looked up; Method: the method's name
  ListPtr list;
  DictPtr dict;
  std::shared_ptr<Namespace> ns;
  Builtin builtin = Builtin::Range;
  std::shared_ptr<const Value> self;  // Method: the object it is bound to

  static Value undefined(std::string what = {}) {
    Value v;
    v.str = std::move(what);
    return v;
  }
  static Value none() {
    Value v;
    v.type = Type::None;
    return v;
  }
  static Value of(bool b) {
    Value v;
    v.type = Type::Bool;
    v.boolean = b;
    return v;
  }
  static Value of(std::int64_t i) {
    Value v;
    v.type = Type::Int;
    v.integer = i;
    return v;
  }
  static Value of(double d) {
    Value v;
    v.type = Type::Float;
    v.real = d;
    return v;
  }
  static Value of(const char* s) { return of(std::string(s)); }
  static Value of(std::string s) {
    Value v;
    v.type = Type::String;
    v.str = std::move(s);
    return v;
  }
  static Value of(Seq l) {
    Value v;
    v.type = Type::List;
    v.list = std::make_shared<const Seq>(std::move(l));
    return v;
  }
  static Value of(Dict d) {
    Value v;
    v.type = Type::Dict;
    v.dict = std::make_shared<const Dict>(std::move(d));
    return v;
  }
  static Value function(Builtin b) {
    Value v;
    v.type = Type::Function;
    v.builtin = b;
    return v;
  }
  static Value method(Value self, std::string name) {
    Value v;
    v.type = Type::Method;
    v.str = std::move(name);
    v.self = std::make_shared<const Value>(std::move(self));
    return v;
  }

  bool isUndefined() const { return type == Type::Undefined; }
  bool isString() const { return type == Type::String; }
  bool isNumber() const { return type == Type::Int || type == Type::Float || type == Type::Bool; }
};

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

const char* typeName(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined: return "undefined";
    case Value::Type::None: return "NoneType";
    case Value::Type::Bool: return "bool";
    case Value::Type::Int: return "int";
    case Value::Type::Float: return "float";
    case Value::Type::String: return "str";
    case Value::Type::List: return "list";
    case Value::Type::Dict: return "dict";
    case Value::Type::Namespace: return "Namespace";
    case Value::Type::Function: return "function";
    case Value::Type::Method: return "method";
  }
  return "?";
}

template <typename Json>
Value fromJson(const Json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::of(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::of(j.template get<std::int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return Value::of(static_cast<std::int64_t>(u));
      return Value::of(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::of(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::of(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      Seq list;
      list.reserve(j.size());
      for (const auto& e : j) list.push_back(fromJson(e));
      return Value::of(std::move(list));
    }
    case nlohmann::json::value_t::object: {
      Dict dict;
      dict.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) dict.items.emplace_back(it.key(), fromJson(it.value()));
      return Value::of(std::move(dict));
    }
    default: return Value::undefined();
  }
}

// Python's repr(float) and str(float).
std::string formatFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci: [-]D[.DDD]e[+-]XX
  const auto epos = sci.find('e');
  const int exponent = std::stoi(sci.substr(epos + 1));
  std::string mantissa = sci.substr(0, epos);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      if (static_cast<int>(digits.size()) <= exponent + 1) {
        out += digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
      }
    } else {
      out += "0." + std::string(-exponent - 1, '0') + digits;
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char expbuf[16];
  std::snprintf(expbuf, sizeof expbuf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + expbuf;
}

// Python's repr(str).
std::string reprString(const std::string& s) {
  const bool hasSingle = s.find('\'') != std::string::npos;
  const bool hasDouble = s.find('"') != std::string::npos;
  const char quote = hasSingle && !hasDouble ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += quote;
  return out;
}

std::string toRepr(const Value& v);

// Python's str(value), as `{{ value }}` prints it.
std::string toStr(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined: return "";
    case Value::Type::None: return "None";
    case Value::Type::Bool: return v.boolean ? "True" : "False";
    case Value::Type::Int: return std::to_string(v.integer);
    case Value::Type::Float: return formatFloat(v.real);
    case Value::Type::String: return v.str;
    case Value::Type::Namespace: return "<Namespace>";
    case Value::Type::Function: return "<function>";
    case Value::Type::Method: return "<method " + v.str + ">";
    default: return toRepr(v);
  }
}

std::string toRepr(const Value& v) {
  switch (v.type) {
    case Value::Type::String: return reprString(v.str);
    case Value::Type::List: {
      std::string out = "[";
      for (std::size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + toRepr((*v.list)[i]);
      return out + "]";
    }
    case Value::Type::Dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : v.dict->items) {
        out += (first ? "" : ", ") + reprString(k) + ": " + toRepr(e);
        first = false;
      }
      return out + "}";
    }
    default: return toStr(v);
  }
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined:
    case Value::Type::None: return false;
    case Value::Type::Bool: return v.boolean;
    case Value::Type::Int: return v.integer != 0;
    case Value::Type::Float: return v.real != 0;
    case Value::Type::String: return !v.str.empty();
    case Value::Type::List: return !v.list->empty();
    case Value::Type::Dict: return !v.dict->items.empty();
    default: return true;
  }
}

double asDouble(const Value& v) {
  return v.type == Value::Type::Float ? v.real : v.type == Value::Type::Bool ? (v.boolean ? 1 : 0) : v.integer;
}
std::int64_t asInt(const Value& v) { return v.type == Value::Type::Bool ? (v.boolean ? 1 : 0) : v.integer; }

bool equal(const Value& a, const Value& b) {
  if (a.isNumber() && b.isNumber()) {
    if (a.type == Value::Type::Float || b.type == Value::Type::Float) return asDouble(a) == asDouble(b);
    return asInt(a) == asInt(b);
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Value::Type::Undefined:
    case Value::Type::None: return true;
    case Value::Type::String: return a.str == b.str;
    case Value::Type::List: {
      if (a.list->size() != b.list->size()) return false;
      for (std::size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    }
    case Value::Type::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (other == nullptr || !equal(v, *other)) return false;
      }
      return true;
    }
    case Value::Type::Namespace: return a.ns == b.ns;
    case Value::Type::Function: return a.builtin == b.builtin;
    default: return false;
  }
}

// JSON as Python's json.dumps(value, ensure_ascii=False, indent=indent) writes it (transformers'
// `tojson`). Throws std::invalid_argument for what JSON cannot hold.
void writeJsonString(const std::string& s, std::string& out) {
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", u);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void writeJson(const Value& v, int indent, int level, std::string& out, std::size_t limit) {
  if (out.size() > limit) throw std::length_error("tojson output too large");
  auto newline = [&](int lvl) {
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * lvl, ' ');
  };
  switch (v.type) {
    case Value::Type::None: out += "null"; return;
    case Value::Type::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Type::Int: out += std::to_string(v.integer); return;
    case Value::Type::Float:
      out += std::isnan(v.real) ? "NaN" : std::isinf(v.real) ? (v.real > 0 ? "Infinity" : "-Infinity") : formatFloat(v.real);
      return;
    case Value::Type::String: writeJsonString(v.str, out); return;
    case Value::Type::List: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (std::size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        writeJson((*v.list)[i], indent, level + 1, out, limit);
      }
      if (indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Value::Type::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [k, e] : v.dict->items) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) newline(level + 1);
        writeJsonString(k, out);
        out += ": ";
        writeJson(e, indent, level + 1, out, limit);
      }
      if (indent >= 0) newline(level);
      out += '}';
      return;
    }
    default: throw std::invalid_argument(std::string("Object of type ") + typeName(v) + " is not JSON serializable");
  }
}

// ---------------------------------------------------------------------------------------------
// Lexer: text and tags, with Jinja's whitespace control, `trim_blocks` and `lstrip_blocks`.

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text: the data; String: the unescaped value; Name, Op, Int, Float: as written
  std::size_t offset = 0;
};

class SourceMap {
 public:
  explicit SourceMap(const std::string& source) : source_(&source) {
    line_starts_.push_back(0);
    for (std::size_t i = 0; i < source.size(); ++i)
      if (source[i] == '\n') line_starts_.push_back(i + 1);
  }
  std::pair<int, int> place(std::size_t offset) const {
    offset = std::min(offset, source_->size());
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const std::size_t line = static_cast<std::size_t>(it - line_starts_.begin());
    const std::size_t start = line_starts_[line - 1];
    const int column = 1 + static_cast<int>(codePointCount(source_->substr(start, offset - start)));
    return {static_cast<int>(line), column};
  }

 private:
  const std::string* source_;
  std::vector<std::size_t> line_starts_;
};

[[noreturn]] void syntaxError(const SourceMap& map, std::size_t offset, const std::string& message) {
  auto [line, column] = map.place(offset);
  throw ChatTemplateError(Kind::Syntax, message, line, column);
}

// Jinja's string literal: Python's unicode-escape decoding of the text between the quotes.
std::string unescape(const std::string& raw) {
  std::string out;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 >= raw.size()) {
      out += raw[i];
      continue;
    }
    const char c = raw[++i];
    auto hex = [&](int digits) -> bool {
      if (i + static_cast<std::size_t>(digits) >= raw.size()) return false;
      std::uint32_t cp = 0;
      for (int k = 1; k <= digits; ++k) {
        const char h = raw[i + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) return false;
        cp = cp * 16 + static_cast<std::uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      appendUtf8(out, static_cast<char32_t>(cp));
      i += digits;
      return true;
    };
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x':
        if (!hex(2)) out += "\\x";
        break;
      case 'u':
        if (!hex(4)) out += "\\u";
        break;
      case 'U':
        if (!hex(8)) out += "\\U";
        break;
      default:
        if (c >= '0' && c <= '7') {
          std::uint32_t cp = static_cast<std::uint32_t>(c - '0');
          for (int k = 0; k < 2 && i + 1 < raw.size() && raw[i + 1] >= '0' && raw[i + 1] <= '7'; ++k)
            cp = cp * 8 + static_cast<std::uint32_t>(raw[++i] - '0');
          appendUtf8(out, static_cast<char32_t>(cp));
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

std::vector<Token> tokenize(const std::string& src, const SourceMap& map) {
  std::vector<Token> tokens;
  std::size_t pos = 0;
  bool line_starting = true;
  while (pos < src.size()) {
    // The next tag opener: {{, {% or {#.
    std::size_t start = pos;
    char kind = 0;
    while ((start = src.find('{', start)) != std::string::npos) {
      if (start + 1 < src.size() && (src[start + 1] == '{' || src[start + 1] == '%' || src[start + 1] == '#')) {
        kind = src[start + 1];
        break;
      }
      ++start;
    }
    if (start == std::string::npos) {
      tokens.push_back({Tok::Text, src.substr(pos), pos});
      break;
    }
    std::string text = src.substr(pos, start - pos);
    std::size_t body = start + 2;
    const char sign = body < src.size() && (src[body] == '-' || src[body] == '+') ? src[body] : 0;
    if (sign) ++body;
    if (sign == '-') {
      while (!text.empty() && isAsciiSpace(text.back())) text.pop_back();
    } else if (sign != '+' && kind != '{') {
      // lstrip_blocks: a block or comment tag alone after indentation takes the indentation.
      const std::size_t line_pos = text.rfind('\n') + 1;  // npos + 1 == 0
      if ((line_pos > 0 || line_starting) && line_pos < text.size() &&
          std::all_of(text.begin() + static_cast<std::ptrdiff_t>(line_pos), text.end(), isAsciiSpace))
        text.erase(line_pos);
    }
    if (!text.empty()) tokens.push_back({Tok::Text, std::move(text), pos});

    // After a closing tag: `-` eats all whitespace; trim_blocks eats one newline after a block
    // or comment.
    auto afterEnd = [&](std::size_t end, char end_sign, bool trim_newline) {
      std::size_t p = end;
      if (end_sign == '-') {
        while (p < src.size() && isAsciiSpace(src[p])) ++p;
      } else if (end_sign != '+' && trim_newline && p < src.size() && src[p] == '\n') {
        ++p;
      }
      line_starting = p > 0 && src[p - 1] == '\n';
      return p;
    };

    if (kind == '#') {
      std::size_t close = src.find("#}", body);
      if (close == std::string::npos) syntaxError(map, start, "unclosed comment: '{#' has no '#}'");
      // The comment regex is lazy, so a '-' or '+' right before the first '#}' is its sign.
      const char end_sign = close > body && (src[close - 1] == '-' || src[close - 1] == '+') ? src[close - 1] : 0;
      pos = afterEnd(close + 2, end_sign, true);
      continue;
    }

    const bool block = kind == '%';
    tokens.push_back({block ? Tok::BlockBegin : Tok::VarBegin, block ? "{%" : "{{", start});
    std::vector<char> balance;
    std::size_t p = body;
    bool closed = false;
    while (p < src.size()) {
      // The closing tag, unless a bracket is open.
      if (balance.empty()) {
        const char* close = block ? "%}" : "}}";
        char end_sign = 0;
        std::size_t q = p;
        if ((src[q] == '-' || (block && src[q] == '+')) && src.compare(q + 1, 2, close) == 0) end_sign = src[q++];
        if (src.compare(q, 2, close) == 0) {
          tokens.push_back({block ? Tok::BlockEnd : Tok::VarEnd, close, p});
          pos = afterEnd(q + 2, end_sign, block);
          closed = true;
          break;
        }
      }
      const char c = src[p];
      if (isAsciiSpace(c)) {
        ++p;
        continue;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        std::size_t q = p;
        while (q < src.size() && (std::isalnum(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        tokens.push_back({Tok::Name, src.substr(p, q - p), p});
        p = q;
        continue;
      }
      if (std::isdigit(static_cast<unsigned char>(c))) {
        std::size_t q = p;
        auto digits = [&] {
          while (q < src.size() && (std::isdigit(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        };
        digits();
        bool is_float = false;
        if (q + 1 < src.size() && src[q] == '.' && std::isdigit(static_cast<unsigned char>(src[q + 1]))) {
          ++q;
          digits();
          is_float = true;
        }
        if (q < src.size() && (src[q] == 'e' || src[q] == 'E')) {
          std::size_t r = q + 1;
          if (r < src.size() && (src[r] == '+' || src[r] == '-')) ++r;
          if (r < src.size() && std::isdigit(static_cast<unsigned char>(src[r]))) {
            q = r;
            digits();
            is_float = true;
          }
        }
        std::string number = src.substr(p, q - p);
        number.erase(std::remove(number.begin(), number.end(), '_'), number.end());
        tokens.push_back({is_float ? Tok::Float : Tok::Int, number, p});
        p = q;
        continue;
      }
      if (c == '\'' || c == '"') {
        std::size_t q = p + 1;
        while (q < src.size() && src[q] != c) q += src[q] == '\\' ? 2 : 1;
        if (q >= src.size()) syntaxError(map, p, "unterminated string literal");
        tokens.push_back({Tok::String, unescape(src.substr(p + 1, q - p - 1)), p});
        p = q + 1;
        continue;
      }
      static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "*", "/", "%", "~", "<",
                                         ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
      const char* op = nullptr;
      for (const char* candidate : kOps)
        if (src.compare(p, std::strlen(candidate), candidate) == 0) {
          op = candidate;
          break;
        }
      if (op == nullptr) syntaxError(map, p, std::string("unexpected character '") + c + "'");
      const std::string o(op);
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) syntaxError(map, p, "unexpected '" + o + "'");
        if (balance.back() != o[0]) syntaxError(map, p, "unexpected '" + o + "', expected '" + balance.back() + "'");
        balance.pop_back();
      }
      tokens.push_back({Tok::Op, o, p});
      p += o.size();
    }
    if (!closed)
      syntaxError(map, start, std::string("unclosed tag: '") + (block ? "{%" : "{{") + "' has no '" + (block ? "%}" : "}}") + "'");
  }
  tokens.push_back({Tok::Eof, "", src.size()});
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// The tree.

enum class Filter {
  Abs, Capitalize, Count, Default, DictSort, First, Float, Int, Items, Join, Last, Length, List, Lower, Map,
  Reject, RejectAttr, Replace, Reverse, Select, SelectAttr, Sort, String, Sum, Title, ToJson, Trim, Unique, Upper,
  Safe, Indent, Min, Max, Round,
};

const std::map<std::string, Filter>& filterTable() {
  static const std::map<std::string, Filter> table = {
      {"abs", Filter::Abs},         {"capitalize", Filter::Capitalize}, {"count", Filter::Count},
      {"d", Filter::Default},       {"default", Filter::Default},       {"dictsort", Filter::DictSort},
      {"first", Filter::First},     {"float", Filter::Float},           {"int", Filter::Int},
      {"items", Filter::Items},     {"join", Filter::Join},             {"last", Filter::Last},
      {"length", Filter::Length},   {"list", Filter::List},             {"lower", Filter::Lower},
      {"map", Filter::Map},         {"reject", Filter::Reject},         {"rejectattr", Filter::RejectAttr},
      {"replace", Filter::Replace}, {"reverse", Filter::Reverse},       {"select", Filter::Select},
      {"selectattr", Filter::SelectAttr}, {"sort", Filter::Sort},       {"string", Filter::String},
      {"sum", Filter::Sum},         {"title", Filter::Title},           {"tojson", Filter::ToJson},
      {"trim", Filter::Trim},       {"unique", Filter::Unique},         {"upper", Filter::Upper},
      {"safe", Filter::Safe},       {"indent", Filter::Indent},         {"min", Filter::Min},
      {"max", Filter::Max},         {"round", Filter::Round},
  };
  return table;
}

enum class Test {
  Defined, Undefined, None, String, Number, Integer, Float, Mapping, Iterable, Sequence, Boolean, True, False,
  EqualTo, NotEqual, Odd, Even, DivisibleBy, In, Lower, Upper, Gt, Ge, Lt, Le, Callable, SameAs,
};

const std::map<std::string, Test>& testTable() {
  static const std::map<std::string, Test> table = {
      {"defined", Test::Defined},   {"undefined", Test::Undefined}, {"none", Test::None},
      {"string", Test::String},     {"number", Test::Number},       {"integer", Test::Integer},
      {"float", Test::Float},       {"mapping", Test::Mapping},     {"iterable", Test::Iterable},
      {"sequence", Test::Sequence}, {"boolean", Test::Boolean},     {"true", Test::True},
      {"false", Test::False},       {"equalto", Test::EqualTo},     {"eq", Test::EqualTo},
      {"==", Test::EqualTo},        {"ne", Test::NotEqual},         {"!=", Test::NotEqual},
      {"odd", Test::Odd},           {"even", Test::Even},           {"divisibleby", Test::DivisibleBy},
      {"in", Test::In},             {"lower", Test::Lower},         {"upper", Test::Upper},
      {"gt", Test::Gt},             {">", Test::Gt},                {"greaterthan", Test::Gt},
      {"ge", Test::Ge},             {">=", Test::Ge},               {"lt", Test::Lt},
      {"<", Test::Lt},              {"lessthan", Test::Lt},         {"le", Test::Le},
      {"<=", Test::Le},             {"callable", Test::Callable},   {"sameas", Test::SameAs},
  };
  return table;
}

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal, Name, ListLit, DictLit, Attr, Subscript, Slice, Call, FilterCall, TestCall, Neg, Pos, Not, And, Or,
    Arith, Concat, Compare, Cond
  };
  Kind kind;
  std::size_t offset = 0;
  Value literal;
  std::string name;  // Name, Attr: the name; Arith: the operator; FilterCall/TestCall: the name
  std::vector<ExprPtr> args;  // children; ListLit items; DictLit keys and values interleaved
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // Compare: the operators between args
  Filter filter = Filter::Trim;
  Test test = Test::Defined;
  bool negated = false;  // TestCall: `is not`
  std::array<bool, 3> slice_has{};  // Slice: which of start, stop, step were written
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind { Text, Output, If, For, Set, SetAttr, SetBlock, Break, Continue, Block };
  Kind kind;
  std::size_t offset = 0;
  std::string text;                  // Text; SetAttr: the attribute
  ExprPtr expr;                      // Output, Set, SetAttr: the value; For: the iterable
  ExprPtr condition;                 // For: the `if` filter
  std::vector<std::string> targets;  // For, Set, SetBlock: the names; SetAttr: the namespace
  std::vector<std::pair<ExprPtr, Body>> branches;  // If
  Body body;                                       // For, SetBlock, Block, If's else
  Body else_body;                                  // For's else
};

}  // namespace

struct ChatTemplate::Program {
  std::string source;
  Body body;
};

namespace {

// ---------------------------------------------------------------------------------------------
// Parser.

constexpr int kMaxNesting = 200;

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, const SourceMap& map) : tokens_(tokens), map_(map) {}

  Body parseTemplate() {
    std::string end;
    Body body = parseBody({}, end);
    return body;
  }

 private:
  const Token& cur() const { return tokens_[pos_]; }
  const Token& peek(std::size_t ahead = 1) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  bool isOp(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool isName(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
  [[noreturn]] void fail(const std::string& message) const { syntaxError(map_, cur().offset, message); }
  [[noreturn]] void failAt(std::size_t offset, const std::string& message) const { syntaxError(map_, offset, message); }

  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "end of statement '%}'";
      case Tok::VarEnd: return "end of print statement '}}'";
      case Tok::String: return "string literal";
      case Tok::Text: return "template text";
      default: return "'" + t.text + "'";
    }
  }
  void expectOp(const char* op) {
    if (!isOp(op)) fail(std::string("expected '") + op + "', got " + describe(cur()));
    ++pos_;
  }
  std::string expectName() {
    if (cur().type != Tok::Name) fail("expected a name, got " + describe(cur()));
    return tokens_[pos_++].text;
  }
  void expectBlockEnd() {
    if (cur().type != Tok::BlockEnd) fail("expected end of statement '%}', got " + describe(cur()));
    ++pos_;
  }

  struct Depth {
    Depth(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxNesting) parser.fail("nested too deeply");
    }
    ~Depth() { --parser.depth_; }
    Parser& parser;
  };

  // Statements until one of `ends` (a block tag name) or the end of the template; leaves the
  // parser on that tag's name and sets `end` to it.
  Body parseBody(const std::vector<std::string>& ends, std::string& end) {
    Depth depth(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        end.clear();
        return body;
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->offset = t.offset;
        s->text = t.text;
        body.push_back(std::move(s));
        ++pos_;
        continue;
      }
      if (t.type == Tok::VarBegin) {
        ++pos_;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->offset = t.offset;
        s->expr = parseTuple(true);
        if (cur().type != Tok::VarEnd) fail("expected end of print statement '}}', got " + describe(cur()));
        ++pos_;
        body.push_back(std::move(s));
        continue;
      }
      if (t.type != Tok::BlockBegin) fail("unexpected " + describe(t));
      const Token& name = peek();
      if (name.type != Tok::Name) failAt(name.offset, "expected a statement name after '{%', got " + describe(name));
      if (std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
        ++pos_;  // on the name
        end = name.text;
        return body;
      }
      body.push_back(parseStatement());
    }
  }

  // Expects `{% NAME` consumed up to NAME (parser on it); the tag is closed by the caller.
  std::unique_ptr<Stmt> parseStatement() {
    const std::size_t tag_offset = cur().offset;
    ++pos_;  // {%
    const Token& name_token = cur();
    const std::string name = name_token.text;
    ++pos_;
    auto s = std::make_unique<Stmt>();
    s->offset = tag_offset;
    auto closeBlock = [&](const std::vector<std::string>& ends, const char* what, std::string& end) -> Body {
      Body body = parseBody(ends, end);
      if (end.empty()) {
        std::string list;
        for (std::size_t i = 0; i < ends.size(); ++i)
          list += (i == 0 ? "'" : i + 1 == ends.size() ? " or '" : ", '") + ends[i] + "'";
        failAt(tag_offset, std::string("'") + what + "' is never closed (expected " + list + ")");
      }
      return body;
    };
    if (name == "if") {
      s->kind = Stmt::Kind::If;
      ExprPtr cond = parseTuple(true);
      expectBlockEnd();
      while (true) {
        std::string end;
        Body body = closeBlock({"elif", "else", "endif"}, "if", end);
        s->branches.emplace_back(std::move(cond), std::move(body));
        ++pos_;  // the tag name
        if (end == "elif") {
          cond = parseTuple(true);
          expectBlockEnd();
          continue;
        }
        if (end == "else") {
          expectBlockEnd();
          s->body = closeBlock({"endif"}, "if", end);
          ++pos_;
        }
        expectBlockEnd();
        break;
      }
      return s;
    }
    if (name == "for") {
      s->kind = Stmt::Kind::For;
      s->targets.push_back(expectName());
      while (isOp(",")) {
        ++pos_;
        s->targets.push_back(expectName());
      }
      if (!isName("in")) fail("expected 'in' in the for loop, got " + describe(cur()));
      ++pos_;
      s->expr = parseTuple(false);
      if (isName("if")) {
        ++pos_;
        s->condition = parseTuple(true);
      }
      if (isName("recursive")) fail("recursive loops are not supported");
      expectBlockEnd();
      std::string end;
      s->body = closeBlock({"else", "endfor"}, "for", end);
      ++pos_;
      if (end == "else") {
        expectBlockEnd();
        s->else_body = closeBlock({"endfor"}, "for", end);
        ++pos_;
      }
      expectBlockEnd();
      return s;
    }
    if (name == "set") {
      const std::string first = expectName();
      if (isOp(".")) {
        ++pos_;
        s->kind = Stmt::Kind::SetAttr;
        s->targets.push_back(first);
        s->text = expectName();
        expectOp("=");
        s->expr = parseTuple(true);
        expectBlockEnd();
        return s;
      }
      s->targets.push_back(first);
      while (isOp(",")) {
        ++pos_;
        s->targets.push_back(expectName());
      }
      if (isOp("=")) {
        ++pos_;
        s->kind = Stmt::Kind::Set;
        s->expr = parseTuple(true);
        expectBlockEnd();
        return s;
      }
      if (s->targets.size() != 1) fail("expected '=' after the names to set");
      if (isOp("|")) fail("filters on a set block are not supported");
      expectBlockEnd();
      s->kind = Stmt::Kind::SetBlock;
      std::string end;
      s->body = closeBlock({"endset"}, "set", end);
      ++pos_;
      expectBlockEnd();
      return s;
    }
    if (name == "break" || name == "continue") {
      s->kind = name == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      expectBlockEnd();
      return s;
    }
    if (name == "generation") {  // transformers' assistant-mask marker: renders its body
      s->kind = Stmt::Kind::Block;
      expectBlockEnd();
      std::string end;
      s->body = closeBlock({"endgeneration"}, "generation", end);
      ++pos_;
      expectBlockEnd();
      return s;
    }
    static const std::vector<std::string> kEnds = {"endif", "endfor", "elif", "else", "endset", "endgeneration"};
    if (std::find(kEnds.begin(), kEnds.end(), name) != kEnds.end())
      failAt(name_token.offset, "unexpected '" + name + "': no open block it could close");
    failAt(name_token.offset, "unknown or unsupported tag '" + name + "'");
  }

  ExprPtr make(Expr::Kind kind, std::size_t offset) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->offset = offset;
    return e;
  }

  // A tuple (`a, b`) where commas may appear: parsed as a list.
  ExprPtr parseTuple(bool with_condexpr) {
    const std::size_t offset = cur().offset;
    ExprPtr first = with_condexpr ? parseExpression() : parseOr();
    if (!isOp(",")) return first;
    auto list = make(Expr::Kind::ListLit, offset);
    list->args.push_back(std::move(first));
    while (isOp(",")) {
      ++pos_;
      if (cur().type == Tok::BlockEnd || cur().type == Tok::VarEnd || isOp(")")) break;
      list->args.push_back(with_condexpr ? parseExpression() : parseOr());
    }
    return list;
  }

  ExprPtr parseExpression() {
    Depth depth(*this);
    ExprPtr expr = parseOr();
    while (isName("if")) {
      const std::size_t offset = cur().offset;
      ++pos_;
      auto cond = make(Expr::Kind::Cond, offset);
      cond->args.push_back(parseOr());     // condition
      cond->args.push_back(std::move(expr));  // value when true
      if (isName("else")) {
        ++pos_;
        cond->args.push_back(parseExpression());
      }
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr parseOr() {
    ExprPtr left = parseAnd();
    while (isName("or")) {
      auto e = make(Expr::Kind::Or, cur().offset);
      ++pos_;
      e->args.push_back(std::move(left));
      e->args.push_back(parseAnd());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parseAnd() {
    ExprPtr left = parseNot();
    while (isName("and")) {
      auto e = make(Expr::Kind::And, cur().offset);
      ++pos_;
      e->args.push_back(std::move(left));
      e->args.push_back(parseNot());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parseNot() {
    if (isName("not")) {
      Depth depth(*this);
      auto e = make(Expr::Kind::Not, cur().offset);
      ++pos_;
      e->args.push_back(parseNot());
      return e;
    }
    return parseCompare();
  }

  ExprPtr parseCompare() {
    const std::size_t offset = cur().offset;
    ExprPtr first = parseMath1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++pos_;
      } else if (isName("in")) {
        op = "in";
        ++pos_;
      } else if (isName("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "not in";
        pos_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, offset);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parseMath1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parseMath1() {
    ExprPtr left = parseConcat();
    while (isOp("+") || isOp("-")) {
      auto e = make(Expr::Kind::Arith, cur().offset);
      e->name = cur().text;
      ++pos_;
      e->args.push_back(std::move(left));
      e->args.push_back(parseConcat());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parseConcat() {
    const std::size_t offset = cur().offset;
    ExprPtr first = parseMath2();
    if (!isOp("~")) return first;
    auto e = make(Expr::Kind::Concat, offset);
    e->args.push_back(std::move(first));
    while (isOp("~")) {
      ++pos_;
      e->args.push_back(parseMath2());
    }
    return e;
  }

  ExprPtr parseMath2() {
    ExprPtr left = parsePow();
    while (isOp("*") || isOp("/") || isOp("//") || isOp("%")) {
      auto e = make(Expr::Kind::Arith, cur().offset);
      e->name = cur().text;
      ++pos_;
      e->args.push_back(std::move(left));
      e->args.push_back(parsePow());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parsePow() {
    ExprPtr left = parseUnary(true);
    if (isOp("**")) fail("the power operator '**' is not supported");
    return left;
  }

  ExprPtr parseUnary(bool with_filter) {
    Depth depth(*this);
    ExprPtr node;
    if (isOp("-") || isOp("+")) {
      node = make(isOp("-") ? Expr::Kind::Neg : Expr::Kind::Pos, cur().offset);
      ++pos_;
      node->args.push_back(parseUnary(false));
    } else {
      node = parsePrimary();
    }
    node = parsePostfix(std::move(node));
    if (with_filter) node = parseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr parsePrimary() {
    const Token& t = cur();
    switch (t.type) {
      case Tok::Name: {
        ++pos_;
        if (t.text == "true" || t.text == "True") return literal(Value::of(true), t.offset);
        if (t.text == "false" || t.text == "False") return literal(Value::of(false), t.offset);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.offset);
        auto e = make(Expr::Kind::Name, t.offset);
        e->name = t.text;
        return e;
      }
      case Tok::String: {
        std::string s;
        const std::size_t offset = t.offset;
        while (cur().type == Tok::String) s += tokens_[pos_++].text;  // adjacent literals join
        return literal(Value::of(std::move(s)), offset);
      }
      case Tok::Int: {
        ++pos_;
        std::int64_t value = 0;
        auto res = std::from_chars(t.text.data(), t.text.data() + t.text.size(), value);
        if (res.ec != std::errc()) failAt(t.offset, "integer literal out of range");
        return literal(Value::of(value), t.offset);
      }
      case Tok::Float: {
        ++pos_;
        return literal(Value::of(std::strtod(t.text.c_str(), nullptr)), t.offset);
      }
      case Tok::Op: {
        if (t.text == "(") {
          ++pos_;
          if (isOp(")")) {  // the empty tuple
            ++pos_;
            return make(Expr::Kind::ListLit, t.offset);
          }
          ExprPtr inner = parseTuple(true);
          expectOp(")");
          return inner;
        }
        if (t.text == "[") {
          ++pos_;
          auto e = make(Expr::Kind::ListLit, t.offset);
          while (!isOp("]")) {
            if (!e->args.empty()) expectOp(",");
            if (isOp("]")) break;
            e->args.push_back(parseExpression());
          }
          ++pos_;
          return e;
        }
        if (t.text == "{") {
          ++pos_;
          auto e = make(Expr::Kind::DictLit, t.offset);
          while (!isOp("}")) {
            if (!e->args.empty()) expectOp(",");
            if (isOp("}")) break;
            e->args.push_back(parseExpression());
            expectOp(":");
            e->args.push_back(parseExpression());
          }
          ++pos_;
          return e;
        }
        break;
      }
      default: break;
    }
    fail("unexpected " + describe(t));
  }

  ExprPtr literal(Value v, std::size_t offset) {
    auto e = make(Expr::Kind::Literal, offset);
    e->literal = std::move(v);
    return e;
  }

  ExprPtr parsePostfix(ExprPtr node) {
    while (true) {
      if (isOp(".")) {
        const std::size_t offset = cur().offset;
        ++pos_;
        if (cur().type == Tok::Int) {
          auto e = make(Expr::Kind::Subscript, offset);
          e->args.push_back(std::move(node));
          std::int64_t index = 0;
          const std::string& digits = cur().text;
          if (std::from_chars(digits.data(), digits.data() + digits.size(), index).ec != std::errc())
            fail("integer literal out of range");
          e->args.push_back(literal(Value::of(index), cur().offset));
          ++pos_;
          node = std::move(e);
          continue;
        }
        auto e = make(Expr::Kind::Attr, offset);
        e->name = expectName();
        e->args.push_back(std::move(node));
        node = std::move(e);
      } else if (isOp("[")) {
        node = parseSubscript(std::move(node));
      } else if (isOp("(")) {
        node = parseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parseSubscript(ExprPtr node) {
    const std::size_t offset = cur().offset;
    ++pos_;  // [
    ExprPtr parts[3];
    std::array<bool, 3> has{};
    bool is_slice = false;
    int part = 0;
    while (!isOp("]")) {
      if (isOp(":")) {
        if (++part > 2) fail("a slice has at most three parts");
        is_slice = true;
        ++pos_;
        continue;
      }
      if (has[part]) fail("expected ':' or ']' in the subscript, got " + describe(cur()));
      parts[part] = parseExpression();
      has[part] = true;
    }
    ++pos_;  // ]
    if (!is_slice) {
      if (!has[0]) failAt(offset, "empty subscript");
      auto e = make(Expr::Kind::Subscript, offset);
      e->args.push_back(std::move(node));
      e->args.push_back(std::move(parts[0]));
      return e;
    }
    auto e = make(Expr::Kind::Slice, offset);
    e->args.push_back(std::move(node));
    for (int k = 0; k < 3; ++k) {
      e->slice_has[k] = has[k];
      e->args.push_back(has[k] ? std::move(parts[k]) : literal(Value::none(), offset));
    }
    return e;
  }

  void parseArgs(Expr& call) {
    expectOp("(");
    bool first = true;
    while (!isOp(")")) {
      if (!first) expectOp(",");
      first = false;
      if (isOp(")")) break;
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        pos_ += 2;
        call.kwargs.emplace_back(std::move(key), parseExpression());
      } else {
        if (!call.kwargs.empty()) fail("a positional argument follows keyword arguments");
        call.args.push_back(parseExpression());
      }
    }
    ++pos_;
  }

  ExprPtr parseCall(ExprPtr callee) {
    auto e = make(Expr::Kind::Call, callee->offset);  // errors name the callee
    e->args.push_back(std::move(callee));
    parseArgs(*e);
    return e;
  }

  ExprPtr parseFilterExpr(ExprPtr node) {
    while (true) {
      if (isOp("|")) {
        ++pos_;
        const std::size_t offset = cur().offset;
        const std::string name = expectName();
        const auto& table = filterTable();
        auto it = table.find(name);
        if (it == table.end()) failAt(offset, "unknown filter '" + name + "'");
        auto e = make(Expr::Kind::FilterCall, offset);
        e->name = name;
        e->filter = it->second;
        e->args.push_back(std::move(node));
        if (isOp("(")) parseArgs(*e);
        node = std::move(e);
      } else if (isName("is")) {
        ++pos_;
        auto e = make(Expr::Kind::TestCall, cur().offset);
        if (isName("not")) {
          e->negated = true;
          ++pos_;
        }
        const std::size_t offset = cur().offset;
        std::string name;
        if (cur().type == Tok::Name || (cur().type == Tok::Op && testTable().count(cur().text))) {
          name = tokens_[pos_++].text;
        } else {
          fail("expected a test name after 'is', got " + describe(cur()));
        }
        auto it = testTable().find(name);
        if (it == testTable().end()) failAt(offset, "unknown test '" + name + "'");
        e->name = name;
        e->test = it->second;
        e->args.push_back(std::move(node));
        if (isOp("(")) {
          parseArgs(*e);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || isOp("(") || isOp("[") || isOp("{")) &&
                   !isName("else") && !isName("or") && !isName("and") && !isName("if") && !isName("in") &&
                   !isName("not") && !isName("is")) {
          e->args.push_back(parsePostfix(parsePrimary()));
        }
        node = std::move(e);
      } else if (isOp("(")) {
        node = parseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  const std::vector<Token>& tokens_;
  const SourceMap& map_;
  std::size_t pos_ = 0;
  int depth_ = 0;

  friend struct Depth;
};

// ---------------------------------------------------------------------------------------------
// Renderer.

enum class Flow { Normal, Break, Continue };

constexpr std::size_t kMaxListItems = 1u << 17;

class Renderer {
 public:
  Renderer(const ChatTemplate::Program& program, Value context, const RenderOptions& options)
      : program_(program), map_(program.source), options_(options) {
    if (context.type == Value::Type::Dict) context_ = context.dict;
    scopes_.emplace_back();
  }

  std::string run() {
    execBody(program_.body);
    return std::move(out_);
  }

 private:
  using Scope = std::vector<std::pair<std::string, Value>>;

  // --- errors and limits

  [[noreturn]] void fail(std::size_t offset, const std::string& message, Kind kind = Kind::Render) const {
    auto [line, column] = map_.place(offset);
    throw ChatTemplateError(kind, message, line, column);
  }

  void step(std::size_t offset, std::size_t cost = 1) {
    steps_ += cost;
    if (steps_ > options_.limits.max_steps)
      fail(offset, "rendering took more than " + std::to_string(options_.limits.max_steps) + " steps", Kind::Limit);
  }

  // A string about to be built: charges its bytes and caps its size.
  void checkString(std::size_t offset, std::size_t bytes) {
    if (bytes > options_.limits.max_output_bytes)
      fail(offset, "a string of " + std::to_string(bytes) + " bytes is over the limit of " +
                       std::to_string(options_.limits.max_output_bytes), Kind::Limit);
    step(offset, bytes / 64);
  }

  void checkList(std::size_t offset, std::size_t items) {
    if (items > kMaxListItems)
      fail(offset, "a list of " + std::to_string(items) + " items is over the limit of " + std::to_string(kMaxListItems),
           Kind::Limit);
    step(offset, items / 8);
  }

  void emit(std::size_t offset, const std::string& text) {
    if (out_.size() + text.size() > options_.limits.max_output_bytes)
      fail(offset, "the rendered prompt is over the limit of " + std::to_string(options_.limits.max_output_bytes) +
                       " bytes", Kind::Limit);
    out_ += text;
  }

  // --- variables

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope)
      for (auto it = scope->rbegin(); it != scope->rend(); ++it)
        if (it->first == name) return it->second;
    if (context_)
      if (const Value* v = context_->find(name)) return *v;
    if (name == "raise_exception") return Value::function(Builtin::RaiseException);
    if (name == "strftime_now") return Value::function(Builtin::StrftimeNow);
    if (name == "range") return Value::function(Builtin::Range);
    if (name == "namespace") return Value::function(Builtin::Namespace);
    if (name == "dict") return Value::function(Builtin::Dict);
    return Value::undefined(name);
  }

  void assign(const std::string& name, Value v) {
    Scope& scope = scopes_.back();
    for (auto& [k, existing] : scope)
      if (k == name) {
        existing = std::move(v);
        return;
      }
    scope.emplace_back(name, std::move(v));
  }

  // --- statements

  Flow execBody(const Body& body) {
    for (const auto& s : body) {
      const Flow flow = exec(*s);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s) {
    step(s.offset);
    switch (s.kind) {
      case Stmt::Kind::Text: emit(s.offset, s.text); return Flow::Normal;
      case Stmt::Kind::Output: {
        const Value v = eval(*s.expr);
        emit(s.offset, toStr(v));
        return Flow::Normal;
      }
      case Stmt::Kind::If:
        for (const auto& [cond, body] : s.branches)
          if (truthy(eval(*cond))) return execBody(body);
        return execBody(s.body);
      case Stmt::Kind::For: return execFor(s);
      case Stmt::Kind::Set: {
        Value v = eval(*s.expr);
        if (s.targets.size() == 1) {
          assign(s.targets[0], std::move(v));
        } else {
          const Seq items = unpack(v, s.targets.size(), s.offset);
          for (std::size_t i = 0; i < items.size(); ++i) assign(s.targets[i], items[i]);
        }
        return Flow::Normal;
      }
      case Stmt::Kind::SetAttr: {
        const Value target = lookup(s.targets[0]);
        if (target.type != Value::Type::Namespace)
          fail(s.offset, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
        Value v = eval(*s.expr);
        auto& attrs = target.ns->attrs.items;
        for (auto& [k, existing] : attrs)
          if (k == s.text) {
            existing = std::move(v);
            return Flow::Normal;
          }
        attrs.emplace_back(s.text, std::move(v));
        return Flow::Normal;
      }
      case Stmt::Kind::SetBlock: {
        std::string saved = std::move(out_);
        out_.clear();
        execBody(s.body);
        std::string captured = std::move(out_);
        out_ = std::move(saved);
        assign(s.targets[0], Value::of(std::move(captured)));
        return Flow::Normal;
      }
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
      case Stmt::Kind::Block: return execBody(s.body);
    }
    return Flow::Normal;
  }

  Seq unpack(const Value& v, std::size_t n, std::size_t offset) {
    Seq items = iterate(v, offset);
    if (items.size() != n)
      fail(offset, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(n) + " names");
    return items;
  }

  Flow execFor(const Stmt& s) {
    const Value iterable = eval(*s.expr);
    Seq items = iterate(iterable, s.expr->offset);
    auto bindTargets = [&](const Value& item) {
      if (s.targets.size() == 1) {
        assign(s.targets[0], item);
      } else {
        const Seq parts = unpack(item, s.targets.size(), s.offset);
        for (std::size_t i = 0; i < parts.size(); ++i) assign(s.targets[i], parts[i]);
      }
    };
    if (s.condition) {
      Seq kept;
      for (const auto& item : items) {
        step(s.offset);
        scopes_.emplace_back();
        bindTargets(item);
        const bool keep = truthy(eval(*s.condition));
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return execBody(s.else_body);
    const auto n = static_cast<std::int64_t>(items.size());
    for (std::int64_t i = 0; i < n; ++i) {
      step(s.offset);
      scopes_.emplace_back();
      Dict loop;
      loop.items = {
          {"index", Value::of(i + 1)},
          {"index0", Value::of(i)},
          {"revindex", Value::of(n - i)},
          {"revindex0", Value::of(n - i - 1)},
          {"first", Value::of(i == 0)},
          {"last", Value::of(i == n - 1)},
          {"length", Value::of(n)},
          {"depth", Value::of(std::int64_t{1})},
          {"depth0", Value::of(std::int64_t{0})},
          {"previtem", i > 0 ? items[i - 1] : Value::undefined("previtem")},
          {"nextitem", i + 1 < n ? items[i + 1] : Value::undefined("nextitem")},
      };
      assign("loop", Value::of(std::move(loop)));
      bindTargets(items[i]);
      const Flow flow = execBody(s.body);
      scopes_.pop_back();
      if (flow == Flow::Break) break;
    }
    return Flow::Normal;
  }

  // The items a for loop (or a filter) walks: a list's elements, a dict's keys, a string's
  // characters; nothing for undefined.
  Seq iterate(const Value& v, std::size_t offset) {
    switch (v.type) {
      case Value::Type::Undefined: return {};
      case Value::Type::List: return *v.list;
      case Value::Type::Dict: {
        Seq keys;
        for (const auto& [k, e] : v.dict->items) keys.push_back(Value::of(k));
        return keys;
      }
      case Value::Type::String: {
        Seq chars;
        const auto offsets = codePointOffsets(v.str);
        checkList(offset, offsets.size());
        for (std::size_t i = 0; i + 1 < offsets.size(); ++i)
          chars.push_back(Value::of(v.str.substr(offsets[i], offsets[i + 1] - offsets[i])));
        return chars;
      }
      default: fail(offset, std::string("'") + typeName(v) + "' object is not iterable");
    }
  }

  // --- expressions

  Value eval(const Expr& e) {
    step(e.offset);
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::ListLit: {
        Seq items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return Value::of(std::move(items));
      }
      case Expr::Kind::DictLit: {
        Dict dict;
        for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value key = eval(*e.args[i]);
          if (!key.isString()) fail(e.args[i]->offset, "dictionary keys must be strings");
          Value value = eval(*e.args[i + 1]);
          bool replaced = false;
          for (auto& [k, v] : dict.items)
            if (k == key.str) {
              v = value;
              replaced = true;
            }
          if (!replaced) dict.items.emplace_back(key.str, std::move(value));
        }
        return Value::of(std::move(dict));
      }
      case Expr::Kind::Attr: {
        const Value obj = eval(*e.args[0]);
        return getAttr(obj, e.name, e.offset, *e.args[0]);
      }
      case Expr::Kind::Subscript: {
        const Value obj = eval(*e.args[0]);
        const Value key = eval(*e.args[1]);
        return getItem(obj, key, e.offset, *e.args[0]);
      }
      case Expr::Kind::Slice: return evalSlice(e);
      case Expr::Kind::Call: return evalCall(e);
      case Expr::Kind::FilterCall: return evalFilter(e);
      case Expr::Kind::TestCall: {
        const bool result = evalTest(e);
        return Value::of(e.negated ? !result : result);
      }
      case Expr::Kind::Neg:
      case Expr::Kind::Pos: {
        const Value v = eval(*e.args[0]);
        if (!v.isNumber()) fail(e.offset, std::string("bad operand type for unary ") + (e.kind == Expr::Kind::Neg ? "-" : "+") + ": '" + typeName(v) + "'");
        if (e.kind == Expr::Kind::Pos) return v.type == Value::Type::Bool ? Value::of(asInt(v)) : v;
        if (v.type == Value::Type::Float) return Value::of(-v.real);
        if (asInt(v) == std::numeric_limits<std::int64_t>::min()) fail(e.offset, "integer overflow");
        return Value::of(-asInt(v));
      }
      case Expr::Kind::Not: return Value::of(!truthy(eval(*e.args[0])));
      case Expr::Kind::And: {
        Value left = eval(*e.args[0]);
        return truthy(left) ? eval(*e.args[1]) : left;
      }
      case Expr::Kind::Or: {
        Value left = eval(*e.args[0]);
        return truthy(left) ? left : eval(*e.args[1]);
      }
      case Expr::Kind::Arith: return arith(e.name, eval(*e.args[0]), eval(*e.args[1]), e.offset);
      case Expr::Kind::Concat: {
        std::string s;
        for (const auto& a : e.args) {
          s += toStr(eval(*a));
          checkString(e.offset, s.size());
        }
        return Value::of(std::move(s));
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0]);
        for (std::size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          if (!compare(e.ops[i], left, right, e.offset)) return Value::of(false);
          left = std::move(right);
        }
        return Value::of(true);
      }
      case Expr::Kind::Cond: {
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args.size() > 2 ? eval(*e.args[2]) : Value::undefined();
      }
    }
    return Value::undefined();
  }

  [[noreturn]] void undefinedError(const Value& obj, std::size_t offset) const {
    fail(offset, "'" + (obj.str.empty() ? std::string("value") : obj.str) + "' is undefined");
  }

  static bool isStringMethod(const std::string& name) {
    static const char* const kMethods[] = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit",
                                           "upper", "lower", "title", "capitalize", "replace", "find", "count",
                                           "join", "splitlines", "isdigit", "isalpha", "isspace"};
    return std::find_if(std::begin(kMethods), std::end(kMethods), [&](const char* m) { return name == m; }) !=
           std::end(kMethods);
  }

  // Jinja's getattr: the object's attribute (a method), else its item; undefined when neither.
  Value getAttr(const Value& obj, const std::string& name, std::size_t offset, const Expr& object_expr) {
    switch (obj.type) {
      case Value::Type::Undefined: undefinedError(obj, object_expr.offset);
      case Value::Type::Dict:
        if (name == "items" || name == "keys" || name == "values" || name == "get") return Value::method(obj, name);
        if (const Value* v = obj.dict->find(name)) return *v;
        break;
      case Value::Type::Namespace:
        if (const Value* v = obj.ns->attrs.find(name)) return *v;
        break;
      case Value::Type::String:
        if (isStringMethod(name)) return Value::method(obj, name);
        break;
      default: break;
    }
    (void)offset;
    return Value::undefined(std::string(typeName(obj)) + " object has no attribute '" + name + "'");
  }

  // Jinja's getitem: the item, else the attribute; undefined when neither.
  Value getItem(const Value& obj, const Value& key, std::size_t offset, const Expr& object_expr) {
    switch (obj.type) {
      case Value::Type::Undefined: undefinedError(obj, object_expr.offset);
      case Value::Type::Dict:
        if (key.isString()) {
          if (const Value* v = obj.dict->find(key.str)) return *v;
          return getAttr(obj, key.str, offset, object_expr);
        }
        break;
      case Value::Type::List:
        if (key.type == Value::Type::Int || key.type == Value::Type::Bool) {
          std::int64_t i = asInt(key);
          const auto n = static_cast<std::int64_t>(obj.list->size());
          if (i < 0) i += n;
          if (i >= 0 && i < n) return (*obj.list)[static_cast<std::size_t>(i)];
        }
        break;
      case Value::Type::String:
        if (key.type == Value::Type::Int) {
          const auto offsets = codePointOffsets(obj.str);
          std::int64_t i = key.integer;
          const auto n = static_cast<std::int64_t>(offsets.size() - 1);
          if (i < 0) i += n;
          if (i >= 0 && i < n)
            return Value::of(obj.str.substr(offsets[static_cast<std::size_t>(i)],
                                            offsets[static_cast<std::size_t>(i) + 1] - offsets[static_cast<std::size_t>(i)]));
        } else if (key.isString()) {
          return getAttr(obj, key.str, offset, object_expr);
        }
        break;
      case Value::Type::Namespace:
        if (key.isString()) return getAttr(obj, key.str, offset, object_expr);
        break;
      default: break;
    }
    return Value::undefined(std::string(typeName(obj)) + " object has no element " + toRepr(key));
  }

  // Python's slice indices for a sequence of length n.
  std::vector<std::int64_t> sliceIndices(const Expr& e, const Value& start_v, const Value& stop_v, const Value& step_v,
                                         std::int64_t n) {
    auto intOrNone = [&](const Value& v, std::int64_t fallback) {
      if (v.type == Value::Type::None) return fallback;
      if (v.type != Value::Type::Int && v.type != Value::Type::Bool)
        fail(e.offset, "slice indices must be integers or none");
      return asInt(v);
    };
    const std::int64_t step_by = intOrNone(step_v, 1);
    if (step_by == 0) fail(e.offset, "slice step cannot be zero");
    std::int64_t start;
    std::int64_t stop;
    if (step_by > 0) {
      start = intOrNone(start_v, 0);
      stop = intOrNone(stop_v, n);
      if (start < 0) start = std::max<std::int64_t>(0, start + n);
      if (stop < 0) stop = std::max<std::int64_t>(0, stop + n);
      start = std::min(start, n);
      stop = std::min(stop, n);
    } else {
      start = intOrNone(start_v, n - 1);
      stop = intOrNone(stop_v, -n - 1);
      if (start < 0) start += n;
      if (stop < 0) stop += n;  // may stay negative: runs to the beginning
      start = std::min(start, n - 1);
      stop = std::max<std::int64_t>(stop, -1);
    }
    std::vector<std::int64_t> indices;
    for (std::int64_t i = start; step_by > 0 ? i < stop : i > stop; i += step_by) indices.push_back(i);
    return indices;
  }

  Value evalSlice(const Expr& e) {
    const Value obj = eval(*e.args[0]);
    const Value start = eval(*e.args[1]);
    const Value stop = eval(*e.args[2]);
    const Value step_v = eval(*e.args[3]);
    if (obj.type == Value::Type::List) {
      const auto idx = sliceIndices(e, start, stop, step_v, static_cast<std::int64_t>(obj.list->size()));
      checkList(e.offset, idx.size());
      Seq out;
      out.reserve(idx.size());
      for (auto i : idx) out.push_back((*obj.list)[static_cast<std::size_t>(i)]);
      return Value::of(std::move(out));
    }
    if (obj.type == Value::Type::String) {
      const auto offsets = codePointOffsets(obj.str);
      const auto idx = sliceIndices(e, start, stop, step_v, static_cast<std::int64_t>(offsets.size() - 1));
      std::string out;
      for (auto i : idx) {
        const auto k = static_cast<std::size_t>(i);
        out.append(obj.str, offsets[k], offsets[k + 1] - offsets[k]);
      }
      return Value::of(std::move(out));
    }
    if (obj.isUndefined()) undefinedError(obj, e.args[0]->offset);
    fail(e.offset, std::string("'") + typeName(obj) + "' object is not subscriptable");
  }

  Value arith(const std::string& op, const Value& a, const Value& b, std::size_t offset) {
    auto typeError = [&]() {
      if (a.isUndefined()) undefinedError(a, offset);
      if (b.isUndefined()) undefinedError(b, offset);
      fail(offset, "unsupported operand type(s) for " + op + ": '" + typeName(a) + "' and '" + typeName(b) + "'");
    };
    if (op == "+") {
      if (a.isString() && b.isString()) {
        checkString(offset, a.str.size() + b.str.size());
        return Value::of(a.str + b.str);
      }
      if (a.type == Value::Type::List && b.type == Value::Type::List) {
        checkList(offset, a.list->size() + b.list->size());
        Seq out = *a.list;
        out.insert(out.end(), b.list->begin(), b.list->end());
        return Value::of(std::move(out));
      }
    }
    if (op == "*") {
      const Value* s = a.isString() || a.type == Value::Type::List ? &a : b.isString() || b.type == Value::Type::List ? &b : nullptr;
      const Value* n = s == &a ? &b : &a;
      if (s != nullptr && (n->type == Value::Type::Int || n->type == Value::Type::Bool)) {
        const std::int64_t times = std::max<std::int64_t>(0, asInt(*n));
        if (s->isString()) {
          if (times > 0 && s->str.size() > options_.limits.max_output_bytes / static_cast<std::size_t>(times))
            checkString(offset, options_.limits.max_output_bytes + 1);
          checkString(offset, s->str.size() * static_cast<std::size_t>(times));
          std::string out;
          for (std::int64_t i = 0; i < times; ++i) out += s->str;
          return Value::of(std::move(out));
        }
        if (times > 0 && s->list->size() > kMaxListItems / static_cast<std::size_t>(times)) checkList(offset, kMaxListItems + 1);
        checkList(offset, s->list->size() * static_cast<std::size_t>(times));
        Seq out;
        for (std::int64_t i = 0; i < times; ++i) out.insert(out.end(), s->list->begin(), s->list->end());
        return Value::of(std::move(out));
      }
    }
    if (!a.isNumber() || !b.isNumber()) typeError();
    const bool real = a.type == Value::Type::Float || b.type == Value::Type::Float || op == "/";
    if (real) {
      const double x = asDouble(a);
      const double y = asDouble(b);
      if (op == "+") return Value::of(x + y);
      if (op == "-") return Value::of(x - y);
      if (op == "*") return Value::of(x * y);
      if (y == 0) fail(offset, "division by zero");
      if (op == "/") return Value::of(x / y);
      if (op == "//") return Value::of(std::floor(x / y));
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::of(m);
    }
    const std::int64_t x = asInt(a);
    const std::int64_t y = asInt(b);
    std::int64_t r = 0;
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) fail(offset, "integer overflow");
      return Value::of(r);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) fail(offset, "integer overflow");
      return Value::of(r);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) fail(offset, "integer overflow");
      return Value::of(r);
    }
    if (y == 0) fail(offset, "integer division or modulo by zero");
    if (x == std::numeric_limits<std::int64_t>::min() && y == -1) fail(offset, "integer overflow");
    std::int64_t q = x / y;
    std::int64_t m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      --q;
      m += y;
    }
    return Value::of(op == "//" ? q : m);
  }

  // -1, 0, 1; fails when Python could not order the two.
  int order(const Value& a, const Value& b, const std::string& op, std::size_t offset) {
    if (a.isNumber() && b.isNumber()) {
      if (a.type == Value::Type::Float || b.type == Value::Type::Float) {
        const double x = asDouble(a);
        const double y = asDouble(b);
        return x < y ? -1 : x > y ? 1 : 0;
      }
      const auto x = asInt(a);
      const auto y = asInt(b);
      return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.isString() && b.isString()) {
      const int c = a.str.compare(b.str);
      return c < 0 ? -1 : c > 0 ? 1 : 0;
    }
    if (a.type == Value::Type::List && b.type == Value::Type::List) {
      const std::size_t n = std::min(a.list->size(), b.list->size());
      for (std::size_t i = 0; i < n; ++i) {
        if (equal((*a.list)[i], (*b.list)[i])) continue;
        return order((*a.list)[i], (*b.list)[i], op, offset);
      }
      return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
    }
    if (a.isUndefined()) undefinedError(a, offset);
    if (b.isUndefined()) undefinedError(b, offset);
    fail(offset, "'" + op + "' not supported between instances of '" + typeName(a) + "' and '" + typeName(b) + "'");
  }

  bool contains(const Value& container, const Value& item, std::size_t offset) {
    switch (container.type) {
      case Value::Type::Undefined: return false;
      case Value::Type::String:
        if (!item.isString()) fail(offset, "'in <string>' requires string as left operand, not " + std::string(typeName(item)));
        return container.str.find(item.str) != std::string::npos;
      case Value::Type::List:
        return std::any_of(container.list->begin(), container.list->end(), [&](const Value& v) { return equal(v, item); });
      case Value::Type::Dict: return item.isString() && container.dict->find(item.str) != nullptr;
      case Value::Type::Namespace: return item.isString() && container.ns->attrs.find(item.str) != nullptr;
      default: fail(offset, std::string("argument of type '") + typeName(container) + "' is not iterable");
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b, std::size_t offset) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in") return contains(b, a, offset);
    if (op == "not in") return !contains(b, a, offset);
    const int c = order(a, b, op, offset);
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
  }

  // --- calls

  struct Args {
    Seq positional;
    std::vector<std::pair<std::string, Value>> keywords;
  };

  Args evalArgs(const Expr& e, std::size_t skip) {
    Args args;
    for (std::size_t i = skip; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) args.keywords.emplace_back(k, eval(*v));
    return args;
  }

  // Binds arguments to parameter names; missing ones are left undefined.
  std::vector<Value> bind(const Args& args, const std::vector<std::string>& params, std::size_t offset,
                          const std::string& what) {
    if (args.positional.size() > params.size())
      fail(offset, what + " takes at most " + std::to_string(params.size()) + " arguments (" +
                       std::to_string(args.positional.size()) + " given)");
    std::vector<Value> bound(params.size(), Value::undefined());
    for (std::size_t i = 0; i < args.positional.size(); ++i) bound[i] = args.positional[i];
    for (const auto& [k, v] : args.keywords) {
      auto it = std::find(params.begin(), params.end(), k);
      if (it == params.end()) fail(offset, what + " got an unexpected keyword argument '" + k + "'");
      bound[static_cast<std::size_t>(it - params.begin())] = v;
    }
    return bound;
  }

  const std::string& requireString(const Value& v, std::size_t offset, const std::string& what) {
    if (!v.isString()) {
      if (v.isUndefined()) undefinedError(v, offset);
      fail(offset, what + " expects a string, got '" + typeName(v) + "'");
    }
    return v.str;
  }

  Value evalCall(const Expr& e) {
    const Value callee = eval(*e.args[0]);
    Args args = evalArgs(e, 1);
    if (callee.type == Value::Type::Function) return callBuiltin(callee.builtin, args, e.offset);
    if (callee.type == Value::Type::Method) return callMethod(*callee.self, callee.str, args, e.offset);
    if (callee.isUndefined()) undefinedError(callee, e.args[0]->offset);
    fail(e.offset, std::string("'") + typeName(callee) + "' object is not callable");
  }

  std::string strftime(const std::string& format, std::size_t offset) {
    std::tm tm{};
    if (options_.local_time) {
      tm = options_.local_time();
    } else {
      const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      localtime_r(&now, &tm);
    }
    if (format.size() > 256) fail(offset, "strftime format too long");
    char buf[1024];
    const std::size_t n = std::strftime(buf, sizeof buf, format.c_str(), &tm);
    return std::string(buf, n);
  }

  Value callBuiltin(Builtin builtin, const Args& args, std::size_t offset) {
    switch (builtin) {
      case Builtin::RaiseException: {
        const std::string message = args.positional.empty() ? std::string("raise_exception") : toStr(args.positional[0]);
        fail(offset, message, Kind::Raised);
      }
      case Builtin::StrftimeNow: {
        const auto bound = bind(args, {"format"}, offset, "strftime_now()");
        return Value::of(strftime(requireString(bound[0], offset, "strftime_now()"), offset));
      }
      case Builtin::Range: {
        if (!args.keywords.empty() || args.positional.empty() || args.positional.size() > 3)
          fail(offset, "range() takes 1 to 3 integer arguments");
        std::vector<std::int64_t> p;
        for (const auto& v : args.positional) {
          if (v.type != Value::Type::Int && v.type != Value::Type::Bool) fail(offset, "range() arguments must be integers");
          p.push_back(asInt(v));
        }
        const std::int64_t start = p.size() == 1 ? 0 : p[0];
        const std::int64_t stop = p.size() == 1 ? p[0] : p[1];
        const std::int64_t by = p.size() == 3 ? p[2] : 1;
        if (by == 0) fail(offset, "range() arg 3 must not be zero");
        // The length, without overflow.
        long double span = by > 0 ? static_cast<long double>(stop) - start : static_cast<long double>(start) - stop;
        const long double len = span <= 0 ? 0 : std::ceil(span / std::fabs(static_cast<long double>(by)));
        if (len > kMaxListItems) checkList(offset, kMaxListItems + 1);
        checkList(offset, static_cast<std::size_t>(len));
        Seq out;
        for (std::int64_t i = 0; i < static_cast<std::int64_t>(len); ++i) out.push_back(Value::of(start + i * by));
        return Value::of(std::move(out));
      }
      case Builtin::Namespace:
      case Builtin::Dict: {
        Dict attrs;
        for (const auto& v : args.positional) {
          if (v.type != Value::Type::Dict) fail(offset, "namespace() and dict() take keyword arguments or a dict");
          attrs.items.insert(attrs.items.end(), v.dict->items.begin(), v.dict->items.end());
        }
        for (const auto& [k, v] : args.keywords) attrs.items.emplace_back(k, v);
        if (builtin == Builtin::Dict) return Value::of(std::move(attrs));
        Value v;
        v.type = Value::Type::Namespace;
        v.ns = std::make_shared<Namespace>();
        v.ns->attrs = std::move(attrs);
        return v;
      }
    }
    return Value::undefined();
  }

  Seq split(const std::string& s, const Value& sep_v, std::int64_t maxsplit, std::size_t offset) {
    Seq parts;
    if (sep_v.isUndefined() || sep_v.type == Value::Type::None) {
      // Runs of whitespace; no empty parts.
      std::size_t pos = 0;
      std::size_t n_split = 0;
      while (pos < s.size()) {
        std::size_t p = pos;
        std::size_t word_start = std::string::npos;
        while (p < s.size()) {
          std::size_t q = p;
          if (!isPySpace(decodeUtf8(s, q))) break;
          p = q;
        }
        if (p >= s.size()) break;
        word_start = p;
        if (maxsplit >= 0 && static_cast<std::int64_t>(n_split) >= maxsplit) {
          std::string rest = s.substr(word_start);
          parts.push_back(Value::of(pyStrip(rest, false, true, nullptr)));
          return parts;
        }
        while (p < s.size()) {
          std::size_t q = p;
          if (isPySpace(decodeUtf8(s, q))) break;
          p = q;
        }
        parts.push_back(Value::of(s.substr(word_start, p - word_start)));
        ++n_split;
        pos = p;
        checkList(offset, parts.size());
      }
      return parts;
    }
    const std::string& sep = requireString(sep_v, offset, "split()");
    if (sep.empty()) fail(offset, "empty separator");
    std::size_t pos = 0;
    std::int64_t n_split = 0;
    while (true) {
      const std::size_t next = (maxsplit >= 0 && n_split >= maxsplit) ? std::string::npos : s.find(sep, pos);
      if (next == std::string::npos) {
        parts.push_back(Value::of(s.substr(pos)));
        break;
      }
      parts.push_back(Value::of(s.substr(pos, next - pos)));
      pos = next + sep.size();
      ++n_split;
      checkList(offset, parts.size());
    }
    return parts;
  }

  static std::string asciiMap(std::string s, int (*f)(int)) {
    for (char& c : s)
      if (static_cast<unsigned char>(c) < 0x80) c = static_cast<char>(f(static_cast<unsigned char>(c)));
    return s;
  }

  static std::string title(const std::string& s) {
    std::string out = s;
    bool prev_cased = false;
    for (char& c : out) {
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x80) {
        prev_cased = true;
        continue;
      }
      if (std::isalpha(u)) {
        c = static_cast<char>(prev_cased ? std::tolower(u) : std::toupper(u));
        prev_cased = true;
      } else {
        prev_cased = false;
      }
    }
    return out;
  }

  static std::string capitalize(const std::string& s) {
    std::string out = asciiMap(s, toLowerAscii);
    if (!out.empty() && static_cast<unsigned char>(out[0]) < 0x80) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
    return out;
  }

  std::string replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count,
                      std::size_t offset) {
    std::string out;
    std::size_t pos = 0;
    std::int64_t done = 0;
    if (from.empty()) {
      // Python inserts `to` between every character.
      const auto offsets = codePointOffsets(s);
      for (std::size_t i = 0; i + 1 < offsets.size(); ++i) {
        if (count < 0 || done < count) {
          out += to;
          ++done;
        }
        out.append(s, offsets[i], offsets[i + 1] - offsets[i]);
        checkString(offset, out.size());
      }
      if (count < 0 || done < count) out += to;
      return out;
    }
    while (count < 0 || done < count) {
      const std::size_t next = s.find(from, pos);
      if (next == std::string::npos) break;
      out.append(s, pos, next - pos);
      out += to;
      pos = next + from.size();
      ++done;
      checkString(offset, out.size());
    }
    out.append(s, pos, std::string::npos);
    checkString(offset, out.size());
    return out;
  }

  Value callMethod(const Value& self, const std::string& name, const Args& args, std::size_t offset) {
    const std::string what = name + "()";
    if (self.type == Value::Type::Dict) {
      if (name == "items") {
        bind(args, {}, offset, what);
        Seq out;
        for (const auto& [k, v] : self.dict->items) out.push_back(Value::of(Seq{Value::of(k), v}));
        return Value::of(std::move(out));
      }
      if (name == "keys") {
        bind(args, {}, offset, what);
        return Value::of(iterate(self, offset));
      }
      if (name == "values") {
        bind(args, {}, offset, what);
        Seq out;
        for (const auto& [k, v] : self.dict->items) out.push_back(v);
        return Value::of(std::move(out));
      }
      // get
      const auto bound = bind(args, {"key", "default"}, offset, what);
      if (bound[0].isString())
        if (const Value* v = self.dict->find(bound[0].str)) return *v;
      return bound[1].isUndefined() ? Value::none() : bound[1];
    }
    const std::string& s = self.str;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const auto bound = bind(args, {"chars"}, offset, what);
      const std::string* chars = bound[0].isString() ? &bound[0].str : nullptr;
      if (!bound[0].isString() && !bound[0].isUndefined() && bound[0].type != Value::Type::None)
        fail(offset, what + " arg must be None or str");
      return Value::of(pyStrip(s, name != "rstrip", name != "lstrip", chars));
    }
    if (name == "startswith" || name == "endswith") {
      const auto bound = bind(args, {"prefix"}, offset, what);
      Seq candidates = bound[0].type == Value::Type::List ? *bound[0].list : Seq{bound[0]};
      for (const auto& c : candidates) {
        const std::string& p = requireString(c, offset, what);
        if (name == "startswith" ? s.compare(0, p.size(), p) == 0 && s.size() >= p.size()
                                 : s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0)
          return Value::of(true);
      }
      return Value::of(false);
    }
    if (name == "split" || name == "rsplit") {
      const auto bound = bind(args, {"sep", "maxsplit"}, offset, what);
      const std::int64_t maxsplit = bound[1].type == Value::Type::Int ? bound[1].integer : -1;
      if (name == "rsplit" && maxsplit >= 0) fail(offset, "rsplit() with maxsplit is not supported");
      return Value::of(split(s, bound[0], maxsplit, offset));
    }
    if (name == "splitlines") {
      bind(args, {}, offset, what);
      Seq parts;
      std::size_t pos = 0;
      while (pos < s.size()) {
        std::size_t nl = s.find_first_of("\r\n", pos);
        if (nl == std::string::npos) {
          parts.push_back(Value::of(s.substr(pos)));
          break;
        }
        parts.push_back(Value::of(s.substr(pos, nl - pos)));
        pos = nl + ((s[nl] == '\r' && nl + 1 < s.size() && s[nl + 1] == '\n') ? 2 : 1);
      }
      return Value::of(std::move(parts));
    }
    if (name == "upper" || name == "lower") {
      bind(args, {}, offset, what);
      return Value::of(asciiMap(s, name == "upper" ? toUpperAscii : toLowerAscii));
    }
    if (name == "title") {
      bind(args, {}, offset, what);
      return Value::of(title(s));
    }
    if (name == "capitalize") {
      bind(args, {}, offset, what);
      return Value::of(capitalize(s));
    }
    if (name == "replace") {
      const auto bound = bind(args, {"old", "new", "count"}, offset, what);
      const std::int64_t count = bound[2].type == Value::Type::Int ? bound[2].integer : -1;
      return Value::of(replace(s, requireString(bound[0], offset, what), requireString(bound[1], offset, what), count, offset));
    }
    if (name == "find" || name == "count") {
      const auto bound = bind(args, {"sub"}, offset, what);
      const std::string& sub = requireString(bound[0], offset, what);
      if (name == "find") {
        const std::size_t at = s.find(sub);
        return Value::of(at == std::string::npos ? std::int64_t{-1} : static_cast<std::int64_t>(codePointCount(s.substr(0, at))));
      }
      if (sub.empty()) return Value::of(static_cast<std::int64_t>(codePointCount(s) + 1));
      std::int64_t n = 0;
      for (std::size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value::of(n);
    }
    if (name == "join") {
      const auto bound = bind(args, {"iterable"}, offset, what);
      std::string out;
      bool first = true;
      for (const auto& item : iterate(bound[0], offset)) {
        if (!first) out += s;
        first = false;
        out += requireString(item, offset, what);
        checkString(offset, out.size());
      }
      return Value::of(std::move(out));
    }
    if (name == "isdigit" || name == "isalpha" || name == "isspace") {
      bind(args, {}, offset, what);
      if (s.empty()) return Value::of(false);
      for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        const bool ok = name == "isdigit" ? std::isdigit(u) != 0 : name == "isalpha" ? std::isalpha(u) != 0 : isAsciiSpace(c);
        if (!ok) return Value::of(false);
      }
      return Value::of(true);
    }
    fail(offset, "unsupported method '" + name + "'");
  }

  // --- filters

  // Items of a list (or of whatever a for loop walks) that pass `test` (or are truthy).
  bool passes(const Value& item, const Args& args, std::size_t first_test_arg, std::size_t offset) {
    if (args.positional.size() <= first_test_arg) return truthy(item);
    const Value& name = args.positional[first_test_arg];
    if (!name.isString()) fail(offset, "the test name must be a string");
    auto it = testTable().find(name.str);
    if (it == testTable().end()) fail(offset, "unknown test '" + name.str + "'");
    Seq test_args(args.positional.begin() + static_cast<std::ptrdiff_t>(first_test_arg) + 1, args.positional.end());
    return applyTest(it->second, item, test_args, offset);
  }

  Value evalFilter(const Expr& e) {
    Value input = eval(*e.args[0]);
    Args args = evalArgs(e, 1);
    const std::size_t offset = e.offset;
    const std::string what = "filter '" + e.name + "'";
    auto noArgs = [&] { bind(args, {}, offset, what); };
    switch (e.filter) {
      case Filter::Trim: {
        const auto bound = bind(args, {"chars"}, offset, what);
        const std::string s = toStr(input);
        return Value::of(pyStrip(s, true, true, bound[0].isString() ? &bound[0].str : nullptr));
      }
      case Filter::Length:
      case Filter::Count:
        noArgs();
        switch (input.type) {
          case Value::Type::Undefined: return Value::of(std::int64_t{0});
          case Value::Type::String: return Value::of(static_cast<std::int64_t>(codePointCount(input.str)));
          case Value::Type::List: return Value::of(static_cast<std::int64_t>(input.list->size()));
          case Value::Type::Dict: return Value::of(static_cast<std::int64_t>(input.dict->items.size()));
          default: fail(offset, std::string("object of type '") + typeName(input) + "' has no len()");
        }
      case Filter::Upper: noArgs(); return Value::of(asciiMap(toStr(input), toUpperAscii));
      case Filter::Lower: noArgs(); return Value::of(asciiMap(toStr(input), toLowerAscii));
      case Filter::Title: noArgs(); return Value::of(title(toStr(input)));
      case Filter::Capitalize: noArgs(); return Value::of(capitalize(toStr(input)));
      case Filter::String: noArgs(); return Value::of(toStr(input));
      case Filter::Safe: noArgs(); return input;
      case Filter::ToJson: {
        const auto bound = bind(args, {"indent"}, offset, what);
        int indent = -1;
        if (bound[0].type == Value::Type::Int) indent = static_cast<int>(std::clamp<std::int64_t>(bound[0].integer, 0, 64));
        else if (!bound[0].isUndefined() && bound[0].type != Value::Type::None) fail(offset, "tojson indent must be an integer");
        std::string out;
        try {
          writeJson(input, indent, 0, out, options_.limits.max_output_bytes);
        } catch (const std::length_error&) {
          checkString(offset, options_.limits.max_output_bytes + 1);
        } catch (const std::invalid_argument& error) {
          if (input.isUndefined()) undefinedError(input, e.args[0]->offset);
          fail(offset, error.what());
        }
        checkString(offset, out.size());
        return Value::of(std::move(out));
      }
      case Filter::Default: {
        const auto bound = bind(args, {"default_value", "boolean"}, offset, what);
        const bool use_default = truthy(bound[1]) ? !truthy(input) : input.isUndefined();
        if (!use_default) return input;
        return bound[0].isUndefined() ? Value::of(std::string()) : bound[0];
      }
      case Filter::First:
      case Filter::Last: {
        noArgs();
        if (input.isUndefined()) undefinedError(input, e.args[0]->offset);
        const Seq items = iterate(input, offset);
        if (items.empty()) return Value::undefined("no first item");
        return e.filter == Filter::First ? items.front() : items.back();
      }
      case Filter::Join: {
        const auto bound = bind(args, {"d", "attribute"}, offset, what);
        const std::string sep = bound[0].isUndefined() ? std::string() : toStr(bound[0]);
        std::string out;
        bool first = true;
        for (const auto& item : iterate(input, offset)) {
          if (!first) out += sep;
          first = false;
          out += toStr(bound[1].isUndefined() ? item : attribute(item, bound[1], offset));
          checkString(offset, out.size());
        }
        return Value::of(std::move(out));
      }
      case Filter::Replace: {
        const auto bound = bind(args, {"old", "new", "count"}, offset, what);
        const std::int64_t count = bound[2].type == Value::Type::Int ? bound[2].integer : -1;
        return Value::of(replace(toStr(input), toStr(bound[0]), toStr(bound[1]), count, offset));
      }
      case Filter::List: {
        noArgs();
        if (input.type == Value::Type::List) return input;
        return Value::of(iterate(input, offset));
      }
      case Filter::Items: {
        noArgs();
        if (input.isUndefined()) return Value::of(Seq{});
        if (input.type != Value::Type::Dict) fail(offset, "can only get item pairs from a mapping");
        return callMethod(input, "items", Args{}, offset);
      }
      case Filter::Select:
      case Filter::Reject: {
        Seq out;
        for (const auto& item : iterate(input, offset)) {
          step(offset);
          if (passes(item, args, 0, offset) == (e.filter == Filter::Select)) out.push_back(item);
        }
        return Value::of(std::move(out));
      }
      case Filter::SelectAttr:
      case Filter::RejectAttr: {
        if (args.positional.empty()) fail(offset, what + " needs an attribute name");
        Seq out;
        for (const auto& item : iterate(input, offset)) {
          step(offset);
          const Value attr = attribute(item, args.positional[0], offset);
          if (passes(attr, args, 1, offset) == (e.filter == Filter::SelectAttr)) out.push_back(item);
        }
        return Value::of(std::move(out));
      }
      case Filter::Map: {
        Seq out;
        const Value* attr = nullptr;
        for (const auto& [k, v] : args.keywords)
          if (k == "attribute") attr = &v;
        Value fallback = Value::undefined();
        for (const auto& [k, v] : args.keywords)
          if (k == "default") fallback = v;
        for (const auto& item : iterate(input, offset)) {
          step(offset);
          if (attr != nullptr) {
            Value v = attribute(item, *attr, offset);
            out.push_back(v.isUndefined() && !fallback.isUndefined() ? fallback : v);
          } else {
            if (args.positional.empty() || !args.positional[0].isString()) fail(offset, "map needs a filter name or attribute=");
            out.push_back(applySimpleFilter(args.positional[0].str, item, offset));
          }
        }
        return Value::of(std::move(out));
      }
      case Filter::Reverse: {
        noArgs();
        if (input.isString()) {
          const auto offsets = codePointOffsets(input.str);
          std::string out;
          for (std::size_t i = offsets.size() - 1; i > 0; --i) out.append(input.str, offsets[i - 1], offsets[i] - offsets[i - 1]);
          return Value::of(std::move(out));
        }
        Seq items = iterate(input, offset);
        std::reverse(items.begin(), items.end());
        return Value::of(std::move(items));
      }
      case Filter::Sort:
      case Filter::DictSort: {
        const auto bound = bind(args, {"reverse", "case_sensitive", "attribute"}, offset, what);
        Seq items;
        if (e.filter == Filter::DictSort) {
          if (input.type != Value::Type::Dict) fail(offset, "dictsort needs a mapping");
          items = *callMethod(input, "items", Args{}, offset).list;
        } else {
          items = iterate(input, offset);
        }
        step(offset, items.size());
        const bool descending = truthy(bound[0]);
        auto key = [&](const Value& v) {
          if (e.filter == Filter::DictSort) return (*v.list)[0];
          return bound[2].isUndefined() ? v : attribute(v, bound[2], offset);
        };
        std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
          const int c = order(key(a), key(b), "<", offset);
          return descending ? c > 0 : c < 0;
        });
        return Value::of(std::move(items));
      }
      case Filter::Unique: {
        noArgs();
        Seq out;
        for (const auto& item : iterate(input, offset)) {
          step(offset, out.size() / 8 + 1);
          if (std::none_of(out.begin(), out.end(), [&](const Value& v) { return equal(v, item); })) out.push_back(item);
        }
        return Value::of(std::move(out));
      }
      case Filter::Sum:
      case Filter::Min:
      case Filter::Max: {
        const auto bound = bind(args, {"attribute"}, offset, what);
        const Seq items = iterate(input, offset);
        Value acc = e.filter == Filter::Sum ? Value::of(std::int64_t{0}) : Value::undefined("empty sequence");
        for (const auto& raw : items) {
          const Value item = bound[0].isUndefined() ? raw : attribute(raw, bound[0], offset);
          if (e.filter == Filter::Sum) {
            acc = arith("+", acc, item, offset);
          } else if (acc.isUndefined()) {
            acc = item;
          } else {
            const int c = order(item, acc, "<", offset);
            if (e.filter == Filter::Min ? c < 0 : c > 0) acc = item;
          }
        }
        return acc;
      }
      case Filter::Int:
      case Filter::Float:
      case Filter::Abs:
      case Filter::Round: return applySimpleFilter(e.name, input, offset);
      case Filter::Indent: {
        const auto bound = bind(args, {"width", "first", "blank"}, offset, what);
        const std::string pad = bound[0].isString() ? bound[0].str : std::string(bound[0].type == Value::Type::Int ? static_cast<std::size_t>(std::clamp<std::int64_t>(bound[0].integer, 0, 256)) : 4, ' ');
        const std::string s = toStr(input);
        std::string out;
        std::size_t pos = 0;
        bool first_line = true;
        while (pos <= s.size()) {
          std::size_t nl = s.find('\n', pos);
          const std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
          if ((!first_line || truthy(bound[1])) && (!line.empty() || truthy(bound[2]))) out += pad;
          out += line;
          checkString(offset, out.size());
          first_line = false;
          if (nl == std::string::npos) break;
          out += '\n';
          pos = nl + 1;
        }
        return Value::of(std::move(out));
      }
    }
    fail(offset, "unsupported filter '" + e.name + "'");
  }

  Value applySimpleFilter(const std::string& name, const Value& input, std::size_t offset) {
    if (name == "int") {
      if (input.type == Value::Type::Int) return input;
      if (input.type == Value::Type::Bool) return Value::of(asInt(input));
      if (input.type == Value::Type::Float) return Value::of(static_cast<std::int64_t>(input.real));
      if (input.isString()) {
        std::int64_t v = 0;
        const std::string s = pyStrip(input.str, true, true, nullptr);
        auto res = std::from_chars(s.data(), s.data() + s.size(), v);
        return Value::of(res.ec == std::errc() && res.ptr == s.data() + s.size() ? v : 0);
      }
      return Value::of(std::int64_t{0});
    }
    if (name == "float") {
      if (input.isNumber()) return Value::of(asDouble(input));
      if (input.isString()) {
        char* end = nullptr;
        const double d = std::strtod(input.str.c_str(), &end);
        return Value::of(end != input.str.c_str() ? d : 0.0);
      }
      return Value::of(0.0);
    }
    if (name == "abs") {
      if (input.type == Value::Type::Float) return Value::of(std::fabs(input.real));
      if (input.isNumber()) {
        if (asInt(input) == std::numeric_limits<std::int64_t>::min()) fail(offset, "integer overflow");
        return Value::of(asInt(input) < 0 ? -asInt(input) : asInt(input));
      }
      fail(offset, std::string("bad operand type for abs(): '") + typeName(input) + "'");
    }
    if (name == "round") {
      if (!input.isNumber()) fail(offset, "round needs a number");
      return Value::of(std::nearbyint(asDouble(input)));
    }
    if (name == "string") return Value::of(toStr(input));
    if (name == "trim") return Value::of(pyStrip(toStr(input), true, true, nullptr));
    if (name == "upper") return Value::of(asciiMap(toStr(input), toUpperAscii));
    if (name == "lower") return Value::of(asciiMap(toStr(input), toLowerAscii));
    if (name == "length" || name == "count") {
      if (input.isString()) return Value::of(static_cast<std::int64_t>(codePointCount(input.str)));
      if (input.type == Value::Type::List) return Value::of(static_cast<std::int64_t>(input.list->size()));
      if (input.type == Value::Type::Dict) return Value::of(static_cast<std::int64_t>(input.dict->items.size()));
    }
    if (name == "tojson") {
      std::string out;
      try {
        writeJson(input, -1, 0, out, options_.limits.max_output_bytes);
      } catch (const std::exception& error) {
        fail(offset, error.what());
      }
      return Value::of(std::move(out));
    }
    fail(offset, "filter '" + name + "' cannot be used in map()");
  }

  // An attribute named by a filter argument ("role", or "function.name").
  Value attribute(const Value& item, const Value& path, std::size_t offset) {
    if (path.type == Value::Type::Int) return getItemQuiet(item, path);
    const std::string& p = requireString(path, offset, "attribute");
    Value v = item;
    std::size_t pos = 0;
    while (true) {
      const std::size_t dot = p.find('.', pos);
      const std::string part = p.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
      v = getItemQuiet(v, Value::of(part));
      if (dot == std::string::npos) return v;
      pos = dot + 1;
    }
  }

  Value getItemQuiet(const Value& obj, const Value& key) {
    if (obj.type == Value::Type::Dict && key.isString()) {
      if (const Value* v = obj.dict->find(key.str)) return *v;
    } else if (obj.type == Value::Type::Namespace && key.isString()) {
      if (const Value* v = obj.ns->attrs.find(key.str)) return *v;
    } else if (obj.type == Value::Type::List && key.type == Value::Type::Int) {
      const auto n = static_cast<std::int64_t>(obj.list->size());
      const std::int64_t i = key.integer < 0 ? key.integer + n : key.integer;
      if (i >= 0 && i < n) return (*obj.list)[static_cast<std::size_t>(i)];
    }
    return Value::undefined(toStr(key));
  }

  // --- tests

  bool evalTest(const Expr& e) {
    const Value input = eval(*e.args[0]);
    Args args = evalArgs(e, 1);
    return applyTest(e.test, input, args.positional, e.offset);
  }

  bool applyTest(Test test, const Value& v, const Seq& args, std::size_t offset) {
    auto arg = [&]() -> const Value& {
      if (args.empty()) fail(offset, "the test needs an argument");
      return args[0];
    };
    switch (test) {
      case Test::Defined: return !v.isUndefined();
      case Test::Undefined: return v.isUndefined();
      case Test::None: return v.type == Value::Type::None;
      case Test::String: return v.isString();
      case Test::Number: return v.type == Value::Type::Int || v.type == Value::Type::Float;
      case Test::Integer: return v.type == Value::Type::Int;
      case Test::Float: return v.type == Value::Type::Float;
      case Test::Boolean: return v.type == Value::Type::Bool;
      case Test::True: return v.type == Value::Type::Bool && v.boolean;
      case Test::False: return v.type == Value::Type::Bool && !v.boolean;
      case Test::Mapping: return v.type == Value::Type::Dict;
      case Test::Iterable:
        return v.type == Value::Type::List || v.type == Value::Type::Dict || v.isString() || v.isUndefined();
      case Test::Sequence: return v.type == Value::Type::List || v.type == Value::Type::Dict || v.isString();
      case Test::Callable: return v.type == Value::Type::Function || v.type == Value::Type::Method;
      case Test::EqualTo: return equal(v, arg());
      case Test::NotEqual: return !equal(v, arg());
      case Test::SameAs:
        return v.type == arg().type && (v.type == Value::Type::None || v.type == Value::Type::Bool ? equal(v, arg()) : false);
      case Test::Odd:
      case Test::Even:
        if (v.type != Value::Type::Int && v.type != Value::Type::Bool) fail(offset, "odd/even need an integer");
        return (((asInt(v) % 2) + 2) % 2 == 1) == (test == Test::Odd);
      case Test::DivisibleBy: {
        if (!v.isNumber() || !arg().isNumber()) fail(offset, "divisibleby needs numbers");
        const Value m = arith("%", v, arg(), offset);
        return asDouble(m) == 0;
      }
      case Test::In: return contains(arg(), v, offset);
      case Test::Lower: {
        const std::string s = toStr(v);
        return s == asciiMap(s, toLowerAscii);
      }
      case Test::Upper: {
        const std::string s = toStr(v);
        return s == asciiMap(s, toUpperAscii);
      }
      case Test::Gt: return order(v, arg(), ">", offset) > 0;
      case Test::Ge: return order(v, arg(), ">=", offset) >= 0;
      case Test::Lt: return order(v, arg(), "<", offset) < 0;
      case Test::Le: return order(v, arg(), "<=", offset) <= 0;
    }
    return false;
  }

  const ChatTemplate::Program& program_;
  SourceMap map_;
  const RenderOptions& options_;
  DictPtr context_;
  std::vector<Scope> scopes_;
  std::string out_;
  std::size_t steps_ = 0;
};

// `break` and `continue` outside a for loop are refused when parsed: a pass over the tags.
void checkLoopControls(const std::vector<Token>& tokens, const SourceMap& map) {
  int depth = 0;
  for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
    if (tokens[i].type != Tok::BlockBegin || tokens[i + 1].type != Tok::Name) continue;
    const std::string& name = tokens[i + 1].text;
    if (name == "for") ++depth;
    else if (name == "endfor") --depth;
    else if ((name == "break" || name == "continue") && depth <= 0)
      syntaxError(map, tokens[i + 1].offset, "'" + name + "' outside a for loop");
  }
}

std::string normalizeNewlines(std::string source) {
  std::string out;
  out.reserve(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  // Jinja drops one trailing newline (keep_trailing_newline is off).
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::ChatTemplate(const ChatTemplate&) = default;
ChatTemplate& ChatTemplate::operator=(const ChatTemplate&) = default;
ChatTemplate::~ChatTemplate() = default;

const std::string& ChatTemplate::source() const { return program_->source; }

ChatTemplate ChatTemplate::parse(std::string source) {
  auto program = std::make_shared<Program>();
  program->source = normalizeNewlines(std::move(source));
  const SourceMap map(program->source);
  const std::vector<Token> tokens = tokenize(program->source, map);
  checkLoopControls(tokens, map);
  Parser parser(tokens, map);
  program->body = parser.parseTemplate();
  return ChatTemplate(std::move(program));
}

std::string ChatTemplate::render(const nlohmann::json& context, const RenderOptions& options) const {
  return Renderer(*program_, fromJson(context), options).run();
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context, const RenderOptions& options) const {
  return Renderer(*program_, fromJson(context), options).run();
}

const char* const kPlainChatTemplate =
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";

std::string renderChat(const std::optional<ChatTemplate>& chat_template, const std::vector<ChatMessage>& messages,
                       const SpecialTokens& tokens, const ChatRenderOptions& options) {
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  if (options.extra_context.is_object())
    for (auto it = options.extra_context.begin(); it != options.extra_context.end(); ++it) context[it.key()] = it.value();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  context["messages"] = std::move(list);
  context["bos_token"] = tokens.bos_token;
  context["eos_token"] = tokens.eos_token;
  context["add_generation_prompt"] = options.add_generation_prompt;
  if (chat_template) return chat_template->render(context, options.render);
  static const ChatTemplate plain = ChatTemplate::parse(kPlainChatTemplate);
  return plain.render(context, options.render);
}

namespace {

std::optional<std::string> readFile(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read " + path.string());
  return text.str();
}

std::optional<nlohmann::json> readTokenizerConfig(const std::string& model_folder) {
  const auto path = std::filesystem::path(model_folder) / "tokenizer_config.json";
  auto text = readFile(path);
  if (!text) return std::nullopt;
  try {
    return nlohmann::json::parse(*text);
  } catch (const nlohmann::json::exception& error) {
    throw std::runtime_error(path.string() + ": " + error.what());
  }
}

std::string tokenContent(const nlohmann::json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

std::optional<std::string> findChatTemplate(const std::string& model_folder) {
  if (auto jinja = readFile(std::filesystem::path(model_folder) / "chat_template.jinja")) return jinja;
  const auto config = readTokenizerConfig(model_folder);
  if (!config || !config->is_object() || !config->contains("chat_template")) return std::nullopt;
  const auto& t = (*config)["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())
    for (const auto& entry : t)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        return entry["template"].get<std::string>();
  return std::nullopt;
}

SpecialTokens findSpecialTokens(const std::string& model_folder) {
  SpecialTokens tokens;
  if (const auto config = readTokenizerConfig(model_folder)) {
    tokens.bos_token = tokenContent(*config, "bos_token");
    tokens.eos_token = tokenContent(*config, "eos_token");
  }
  return tokens;
}

}  // namespace computron::text
