#include "common/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <filesystem>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <utility>
#include <variant>

#include "common/json_reader.h"
#include "common/text/unicode_tables.h"
#include "common/text/utf8.h"
#include "common/types.h"

namespace computron::text {

namespace {

// ---------------------------------------------------------------------------------------------
// UTF-8


const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// The well-formed sequences of Unicode table 3-7: for a lead byte, the number of continuation
// bytes and the range of the first of them (0 continuation bytes: not a lead byte).
struct Utf8Lead {
  int continuation;
  unsigned char lo, hi;
};
Utf8Lead utf8Lead(unsigned char b) {
  if (b < 0x80) return {0, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}

// One step over `s` at `i`: the length of a well-formed character (> 0), or -k for an ill-formed
// prefix of k bytes, or 0 when the bytes end inside a so far well-formed character.
int utf8Step(std::string_view s, std::size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const Utf8Lead lead = utf8Lead(b);
  if (lead.continuation == 0) return 1;
  if (lead.continuation < 0) return -1;
  for (int k = 0; k < lead.continuation; ++k) {
    const std::size_t j = i + 1 + static_cast<std::size_t>(k);
    if (j >= s.size()) return 0;
    const auto c = static_cast<unsigned char>(s[j]);
    const unsigned char lo = k == 0 ? lead.lo : 0x80, hi = k == 0 ? lead.hi : 0xBF;
    if (c < lo || c > hi) return -(k + 1);
  }
  return lead.continuation + 1;
}

// Rust's String::from_utf8_lossy (one U+FFFD per maximal ill-formed subpart), over the front of
// `bytes`; unless `final`, a character cut off at the end stays in `bytes` for more to come.
std::string takeLossyUtf8(std::string& bytes, bool final) {
  std::string out;
  std::size_t i = 0;
  while (i < bytes.size()) {
    const int step = utf8Step(bytes, i);
    if (step > 0) {
      out.append(bytes, i, static_cast<std::size_t>(step));
      i += static_cast<std::size_t>(step);
    } else if (step < 0) {
      out += kReplacementChar;
      i += static_cast<std::size_t>(-step);
    } else {
      if (!final) break;
      out += kReplacementChar;
      i = bytes.size();
    }
  }
  bytes.erase(0, i);
  return out;
}

bool isValidUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const int step = utf8Step(s, i);
    if (step <= 0) return false;
    i += static_cast<std::size_t>(step);
  }
  return true;
}

char32_t decodeAt(std::string_view s, std::size_t i, int length) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (length == 1) return b;
  char32_t cp = b & (0x7F >> length);
  for (int k = 1; k < length; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]) & 0x3F);
  return cp;
}

// ---------------------------------------------------------------------------------------------
// Code point classes

enum class CharClass : std::uint8_t { Letter, Number, Whitespace, Other };

bool inRanges(const CodePointRange* ranges, std::size_t n, char32_t cp) {
  const CodePointRange* end = ranges + n;
  const CodePointRange* it =
      std::upper_bound(ranges, end, cp, [](char32_t v, const CodePointRange& r) { return v < r.lo; });
  return it != ranges && cp <= (it - 1)->hi;
}

CharClass classify(char32_t cp) {
  if (inRanges(kLetterRanges, kLetterRangesSize, cp)) return CharClass::Letter;
  if (inRanges(kNumberRanges, kNumberRangesSize, cp)) return CharClass::Number;
  if (inRanges(kWhitespaceRanges, kWhitespaceRangesSize, cp)) return CharClass::Whitespace;
  return CharClass::Other;
}

bool isWhitespace(char32_t cp) { return inRanges(kWhitespaceRanges, kWhitespaceRangesSize, cp); }

struct CodePoint {
  char32_t cp;
  std::uint32_t offset;  // byte offset in the piece
  CharClass cls;
};

std::vector<CodePoint> codePoints(std::string_view s) {
  std::vector<CodePoint> out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const int length = utf8Step(s, i);  // pieces are valid UTF-8 (checked on entry)
    const char32_t cp = decodeAt(s, i, length);
    out.push_back({cp, static_cast<std::uint32_t>(i), classify(cp)});
    i += static_cast<std::size_t>(length);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The two pre-tokenizer patterns, as scanners: each returns the end (in code points) of the
// match at `i`, which is never empty and never absent (the last alternatives take any whitespace,
// and every other code point is a letter, a number or neither).

const std::string kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const std::string kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class SplitPattern { Gpt2, Llama3 };

std::size_t runOf(const std::vector<CodePoint>& c, std::size_t i, CharClass cls) {
  while (i < c.size() && c[i].cls == cls) ++i;
  return i;
}

// `\s+(?!\S)|\s+` at a whitespace code point: the run, less its last code point when a
// non-space follows and the run is longer than one.
std::size_t whitespaceTail(const std::vector<CodePoint>& c, std::size_t i) {
  const std::size_t end = runOf(c, i, CharClass::Whitespace);
  if (end == c.size() || end - i == 1) return end;
  return end - 1;
}

std::size_t matchGpt2(const std::vector<CodePoint>& c, std::size_t i) {
  const std::size_t n = c.size();
  if (c[i].cp == U'\'' && i + 1 < n) {
    const char32_t a = c[i + 1].cp;
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
    if (i + 2 < n) {
      const char32_t b = c[i + 2].cp;
      if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
    }
  }
  for (const CharClass cls : {CharClass::Letter, CharClass::Number, CharClass::Other}) {
    if (c[i].cp == U' ' && i + 1 < n && c[i + 1].cls == cls) return runOf(c, i + 1, cls);
    if (c[i].cls == cls) return runOf(c, i, cls);
  }
  return whitespaceTail(c, i);
}

// (?i:...) folds case: `S` and U+017F (long s) match `s` as well.
bool foldsTo(char32_t cp, char lower) {
  if (cp == static_cast<char32_t>(lower) || cp == static_cast<char32_t>(lower - 'a' + 'A')) return true;
  return lower == 's' && cp == 0x17F;
}

bool isNewline(char32_t cp) { return cp == U'\r' || cp == U'\n'; }

std::size_t matchLlama3(const std::vector<CodePoint>& c, std::size_t i) {
  const std::size_t n = c.size();
  if (c[i].cp == U'\'' && i + 1 < n) {
    const char32_t a = c[i + 1].cp;
    if (foldsTo(a, 's') || foldsTo(a, 't') || foldsTo(a, 'm') || foldsTo(a, 'd')) return i + 2;
    if (i + 2 < n) {
      const char32_t b = c[i + 2].cp;
      if ((foldsTo(a, 'r') && foldsTo(b, 'e')) || (foldsTo(a, 'v') && foldsTo(b, 'e')) ||
          (foldsTo(a, 'l') && foldsTo(b, 'l'))) {
        return i + 3;
      }
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!isNewline(c[i].cp) && c[i].cls != CharClass::Letter && c[i].cls != CharClass::Number && i + 1 < n &&
      c[i + 1].cls == CharClass::Letter) {
    return runOf(c, i + 1, CharClass::Letter);
  }
  if (c[i].cls == CharClass::Letter) return runOf(c, i, CharClass::Letter);
  // \p{N}{1,3}
  if (c[i].cls == CharClass::Number) return std::min(runOf(c, i, CharClass::Number), i + 3);
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  std::size_t start = n;
  if (c[i].cp == U' ' && i + 1 < n && c[i + 1].cls == CharClass::Other) start = i + 1;
  else if (c[i].cls == CharClass::Other) start = i;
  if (start != n) {
    std::size_t end = runOf(c, start, CharClass::Other);
    while (end < n && isNewline(c[end].cp)) ++end;
    return end;
  }
  // \s*[\r\n]+ : the whitespace run up to its last newline
  const std::size_t run_end = runOf(c, i, CharClass::Whitespace);
  for (std::size_t p = run_end; p > i; --p) {
    if (isNewline(c[p - 1].cp)) return p;
  }
  return whitespaceTail(c, i);
}

// Splits `s` into the matches of the pattern (Split behavior Isolated: every code point is in
// one match).
std::vector<std::string> splitPattern(std::string_view s, SplitPattern pattern) {
  std::vector<std::string> out;
  const std::vector<CodePoint> c = codePoints(s);
  for (std::size_t i = 0; i < c.size();) {
    const std::size_t end = pattern == SplitPattern::Gpt2 ? matchGpt2(c, i) : matchLlama3(c, i);
    const std::size_t from = c[i].offset, to = end < c.size() ? c[end].offset : s.size();
    out.emplace_back(s.substr(from, to - from));
    i = end;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2's byte-to-character map: printable bytes stand for themselves, the others for U+0100 on.

struct ByteLevelMap {
  std::array<std::string, 256> byte_to_text;
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  ByteLevelMap() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      appendUtf8(byte_to_text[static_cast<std::size_t>(b)], cp);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteLevelMap& byteLevelMap() {
  static const ByteLevelMap map;
  return map;
}

std::string replaceAll(std::string_view s, const std::string& pattern, const std::string& content) {
  if (pattern.empty()) return std::string(s);
  std::string out;
  std::size_t i = 0;
  while (true) {
    const std::size_t at = s.find(pattern, i);
    if (at == std::string_view::npos) break;
    out.append(s.substr(i, at - i));
    out += content;
    i = at + pattern.size();
  }
  out.append(s.substr(i));
  return out;
}

std::size_t countCodePoints(std::string_view s) {
  std::size_t n = 0;
  for (const char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

// The single code point of `s`, or the error naming `where`.
char32_t singleCodePoint(const JsonReader& where, const std::string& s) {
  if (s.empty() || !isValidUtf8(s) || countCodePoints(s) != 1) where.fail("expected one character, got \"" + s + "\"");
  return decodeAt(s, 0, utf8Step(s, 0));
}

// ---------------------------------------------------------------------------------------------
// Pipeline components

struct NormalizerStep {
  enum Kind { Prepend, Replace, ByteLevel } kind;
  std::string text;     // Prepend: the prefix; Replace: the pattern
  std::string content;  // Replace: the replacement
};

struct PreTokenizerStep {
  enum Kind { Split, ByteLevel, Metaspace } kind = Split;
  SplitPattern pattern = SplitPattern::Gpt2;  // Split, ByteLevel with use_regex
  bool add_prefix_space = false;              // ByteLevel
  bool use_regex = true;                      // ByteLevel
  std::string replacement;                    // Metaspace
  enum Prepend { Always, First, Never } prepend = Always;
  bool split = true;  // Metaspace
};

struct DecoderStep {
  enum Kind { ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, JoinWithSpace } kind = Fuse;
  bool after_fuse = false;  // tokens reach this step as pieces of one fused token
  std::string pattern, content;  // Replace; Strip: content (one character)
  std::size_t start = 0, stop = 0;  // Strip
  std::string replacement;          // Metaspace
  bool drop_first = true;           // Metaspace: prepend_scheme is not never
};

struct AddedToken {
  std::int32_t id;
  std::string content;
  bool special, normalized, lstrip, rstrip, single_word;
  // What decode() reads for this id: as Hugging Face (0.23), the normalized content for a
  // normalized token (`▁<s>` under a Prepend("▁") normalizer), else the content.
  std::string decode_text;
};

// A piece of input text on its way through the pipeline; at_start: it begins at offset 0 of the
// original text (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  bool at_start;
};

// Leftmost-longest matching of added tokens' text, as Hugging Face's Aho-Corasick automaton.
class AddedTokenMatcher {
 public:
  void add(std::string pattern, std::size_t token) {
    if (pattern.empty()) return;
    by_first_byte_[static_cast<unsigned char>(pattern[0])].push_back({std::move(pattern), token});
  }
  void finalize() {
    for (auto& bucket : by_first_byte_) {
      std::stable_sort(bucket.begin(), bucket.end(),
                       [](const Entry& a, const Entry& b) { return a.pattern.size() > b.pattern.size(); });
    }
  }
  bool empty() const {
    return std::all_of(by_first_byte_.begin(), by_first_byte_.end(), [](const auto& b) { return b.empty(); });
  }
  struct Match {
    std::size_t start, end, token;
  };
  // The leftmost-longest match at or after `from`.
  std::optional<Match> find(std::string_view s, std::size_t from) const {
    for (std::size_t i = from; i < s.size(); ++i) {
      for (const Entry& e : by_first_byte_[static_cast<unsigned char>(s[i])]) {
        if (s.compare(i, e.pattern.size(), e.pattern) == 0) return Match{i, i + e.pattern.size(), e.token};
      }
    }
    return std::nullopt;
  }

 private:
  struct Entry {
    std::string pattern;
    std::size_t token;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;
};

constexpr std::size_t kWordCacheCapacity = 10000;  // Hugging Face's default
constexpr std::size_t kWordCacheMaxBytes = 256;    // longer words are not cached

std::uint64_t pairKey(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;  // the file, for messages
  // model (BPE)
  std::unordered_map<std::string, std::int32_t> vocab;
  std::unordered_map<std::int32_t, std::string> vocab_r;
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;  // -> (rank, new id)
  std::optional<std::int32_t> unk_id;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::array<std::int32_t, 256> byte_ids{};  // <0xNN> tokens, -1 where absent
  // pipeline
  std::vector<AddedToken> added;
  std::unordered_map<std::int32_t, std::size_t> added_by_id;
  std::unordered_map<std::string, std::size_t> added_by_content;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<std::int32_t> prefix_ids, suffix_ids;  // post-processor, single sequence
  std::vector<DecoderStep> decoder;
  std::optional<std::int32_t> bos, eos;
  std::int32_t vocab_size = 0;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> word_cache;

  // loading
  void readAddedTokens(const JsonReader& r);
  void readNormalizer(const JsonReader& r);
  void readPreTokenizer(const JsonReader& r);
  void readModel(const JsonReader& r);
  void readPostProcessor(const JsonReader& r);
  void readDecoder(const JsonReader& r, bool& fused);
  void finishLoading();

  // encoding
  std::string normalize(std::string_view s) const;
  void splitAdded(const Piece& piece, const AddedTokenMatcher& matcher, bool parse_special,
                  std::vector<std::variant<std::int32_t, Piece>>& out) const;
  std::vector<std::string> preTokenize(Piece piece) const;
  void bpe(const std::string& word, std::vector<std::int32_t>& out) const;
  std::vector<std::int32_t> bpeUncached(const std::string& word) const;
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens, bool parse_special) const;
  std::optional<std::string> idToToken(std::int32_t id) const;
  bool isSpecialId(std::int32_t id) const;
  bool isSpecialText(const std::string& token) const;
};

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

std::string typeOf(const JsonReader& r) {
  if (!r.isObject()) r.fail("expected an object");
  return r.requireString("type");
}

[[noreturn]] void unsupportedType(const JsonReader& r, const std::string& type, const std::string& supported) {
  r.at("type").fail("unsupported type \"" + type + "\" (supported: " + supported + ")");
}

// A tokenizer_config.json token: "<s>" or {"content": "<s>", ...}.
std::optional<std::string> configToken(const JsonReader& config, const std::string& key) {
  if (!config.has(key) || config.json().at(key).is_null()) return std::nullopt;
  const JsonReader value = config.at(key);
  if (value.isString()) return value.asString();
  if (value.isObject()) return value.requireString("content");
  value.fail("expected a string or an object with \"content\"");
}

}  // namespace

void Tokenizer::Impl::readAddedTokens(const JsonReader& r) {
  for (std::size_t i = 0; i < r.size(); ++i) {
    const JsonReader t = r.at(i);
    const std::int64_t id = t.at("id").asIntIn(0, INT32_MAX);
    AddedToken token{static_cast<std::int32_t>(id), t.requireString("content"), t.getBool("special", false),
                     t.getBool("normalized", true), t.getBool("lstrip", false), t.getBool("rstrip", false),
                     t.getBool("single_word", false), {}};
    if (token.content.empty()) t.at("content").fail("empty added token");
    if (!isValidUtf8(token.content)) t.at("content").fail("not valid UTF-8");
    added_by_id[token.id] = added.size();
    added_by_content[token.content] = added.size();
    added.push_back(std::move(token));
  }
}

void Tokenizer::Impl::readNormalizer(const JsonReader& r) {
  const std::string type = typeOf(r);
  if (type == "Sequence") {
    const JsonReader list = r.at("normalizers");
    for (std::size_t i = 0; i < list.size(); ++i) readNormalizer(list.at(i));
  } else if (type == "Prepend") {
    normalizer.push_back({NormalizerStep::Prepend, r.requireString("prepend"), {}});
  } else if (type == "Replace") {
    const JsonReader pattern = r.at("pattern");
    if (!pattern.has("String")) pattern.fail("unsupported pattern (only {\"String\": ...} is supported)");
    normalizer.push_back({NormalizerStep::Replace, pattern.requireString("String"), r.requireString("content")});
  } else if (type == "ByteLevel") {
    normalizer.push_back({NormalizerStep::ByteLevel, {}, {}});
  } else {
    unsupportedType(r, type, "Sequence, Prepend, Replace, ByteLevel");
  }
}

void Tokenizer::Impl::readPreTokenizer(const JsonReader& r) {
  const std::string type = typeOf(r);
  if (type == "Sequence") {
    const JsonReader list = r.at("pretokenizers");
    for (std::size_t i = 0; i < list.size(); ++i) readPreTokenizer(list.at(i));
  } else if (type == "ByteLevel") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::ByteLevel;
    step.add_prefix_space = r.getBool("add_prefix_space", true);
    step.use_regex = r.getBool("use_regex", true);
    pre_tokenizer.push_back(step);
  } else if (type == "Split") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Split;
    const JsonReader pattern = r.at("pattern");
    if (!pattern.has("Regex")) pattern.fail("unsupported pattern (only the GPT-2 and Llama 3 Regex patterns are supported)");
    const std::string regex = pattern.requireString("Regex");
    if (regex == kGpt2Pattern) {
      step.pattern = SplitPattern::Gpt2;
    } else if (regex == kLlama3Pattern) {
      step.pattern = SplitPattern::Llama3;
    } else {
      pattern.at("Regex").fail("unsupported pattern " + regex + " (supported: the GPT-2 and Llama 3 patterns)");
    }
    const std::string behavior = r.getString("behavior", "Isolated");
    if (behavior != "Isolated") r.at("behavior").fail("unsupported behavior \"" + behavior + "\" (supported: Isolated)");
    if (r.getBool("invert", false)) r.at("invert").fail("inverted Split is not supported");
    pre_tokenizer.push_back(step);
  } else if (type == "Metaspace") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Metaspace;
    step.replacement = r.getString("replacement", "\xE2\x96\x81");
    singleCodePoint(r.has("replacement") ? r.at("replacement") : r, step.replacement);
    std::string scheme = r.getString("prepend_scheme", "");
    if (scheme.empty()) scheme = r.getBool("add_prefix_space", true) ? "always" : "never";  // older files
    if (scheme == "always") step.prepend = PreTokenizerStep::Always;
    else if (scheme == "first") step.prepend = PreTokenizerStep::First;
    else if (scheme == "never") step.prepend = PreTokenizerStep::Never;
    else r.at("prepend_scheme").fail("unknown prepend_scheme \"" + scheme + "\"");
    step.split = r.getBool("split", true);
    pre_tokenizer.push_back(step);
  } else {
    unsupportedType(r, type, "Sequence, ByteLevel, Split, Metaspace");
  }
}

void Tokenizer::Impl::readModel(const JsonReader& r) {
  const std::string type = r.isObject() && r.has("type") ? r.requireString("type") : "BPE";
  if (type != "BPE") unsupportedType(r, type, "BPE");
  if (r.has("dropout") && !r.json().at("dropout").is_null() && r.at("dropout").asDouble() != 0.0) {
    r.at("dropout").fail("BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (r.has(key) && !r.json().at(key).is_null() && !r.requireString(key).empty()) {
      r.at(key).fail("not supported");
    }
  }
  const JsonReader v = r.at("vocab");
  if (!v.isObject()) v.fail("expected an object of token: id");
  vocab.reserve(v.json().size());
  vocab_r.reserve(v.json().size());
  for (auto it = v.json().begin(); it != v.json().end(); ++it) {
    const nlohmann::json& value = it.value();
    const std::int64_t id = value.is_number_unsigned() && value.get<std::uint64_t>() <= INT32_MAX
                                ? value.get<std::int64_t>()
                                : v.at(it.key()).asIntIn(0, INT32_MAX);  // the error, with its path
    vocab[it.key()] = static_cast<std::int32_t>(id);
    vocab_r[static_cast<std::int32_t>(id)] = it.key();
  }
  const JsonReader m = r.at("merges");
  for (std::size_t i = 0; i < m.size(); ++i) {
    const JsonReader entry = m.at(i);
    std::string a, b;
    if (entry.isString()) {
      const std::string s = entry.asString();
      const std::size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        entry.fail("bad merges entry \"" + s + "\" (expected two tokens separated by one space)");
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (entry.isArray() && entry.size() == 2) {
      a = entry.at(std::size_t{0}).asString();
      b = entry.at(std::size_t{1}).asString();
    } else {
      entry.fail("bad merges entry (expected \"a b\" or [\"a\", \"b\"])");
    }
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    if (ia == vocab.end()) entry.fail("merge token \"" + a + "\" is not in the vocabulary");
    if (ib == vocab.end()) entry.fail("merge token \"" + b + "\" is not in the vocabulary");
    if (iab == vocab.end()) entry.fail("merged token \"" + a + b + "\" is not in the vocabulary");
    merges[pairKey(ia->second, ib->second)] = {static_cast<std::int32_t>(i), iab->second};  // a repeated pair: the last rank
  }
  if (r.has("unk_token") && !r.json().at("unk_token").is_null()) {
    const std::string unk = r.requireString("unk_token");
    const auto it = vocab.find(unk);
    if (it == vocab.end()) r.at("unk_token").fail("\"" + unk + "\" is not in the vocabulary");
    unk_id = it->second;
  }
  fuse_unk = r.getBool("fuse_unk", false);
  byte_fallback = r.getBool("byte_fallback", false);
  ignore_merges = r.getBool("ignore_merges", false);
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const std::string name = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
    const auto it = vocab.find(name);
    byte_ids[static_cast<std::size_t>(b)] = it == vocab.end() ? -1 : it->second;
  }
}

void Tokenizer::Impl::readPostProcessor(const JsonReader& r) {
  const std::string type = typeOf(r);
  if (type == "Sequence") {
    const JsonReader list = r.at("processors");
    for (std::size_t i = 0; i < list.size(); ++i) readPostProcessor(list.at(i));
    return;
  }
  std::vector<std::int32_t> before, after;
  if (type == "ByteLevel") {
    return;
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    before.push_back(static_cast<std::int32_t>(r.at("cls").at(std::size_t{1}).asIntIn(0, INT32_MAX)));
    after.push_back(static_cast<std::int32_t>(r.at("sep").at(std::size_t{1}).asIntIn(0, INT32_MAX)));
  } else if (type == "TemplateProcessing") {
    const JsonReader single = r.at("single");
    const JsonReader specials = r.at("special_tokens");
    bool seen_a = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const JsonReader item = single.at(i);
      if (item.has("Sequence")) {
        const std::string which = item.at("Sequence").requireString("id");
        if (which != "A" || seen_a) item.fail("the single template may hold only one $A");
        seen_a = true;
      } else if (item.has("SpecialToken")) {
        const std::string name = item.at("SpecialToken").requireString("id");
        if (!specials.has(name)) item.at("SpecialToken").at("id").fail("\"" + name + "\" is not in special_tokens");
        const JsonReader ids = specials.at(name).at("ids");
        for (std::size_t k = 0; k < ids.size(); ++k) {
          (seen_a ? after : before).push_back(static_cast<std::int32_t>(ids.at(k).asIntIn(0, INT32_MAX)));
        }
      } else {
        item.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    if (!seen_a) single.fail("the single template has no $A");
  } else {
    unsupportedType(r, type, "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing");
  }
  // A later processor wraps what the earlier ones made.
  prefix_ids.insert(prefix_ids.begin(), before.begin(), before.end());
  suffix_ids.insert(suffix_ids.end(), after.begin(), after.end());
}

void Tokenizer::Impl::readDecoder(const JsonReader& r, bool& fused) {
  const std::string type = typeOf(r);
  DecoderStep step;
  step.after_fuse = fused;
  if (type == "Sequence") {
    const JsonReader list = r.at("decoders");
    for (std::size_t i = 0; i < list.size(); ++i) readDecoder(list.at(i), fused);
    return;
  } else if (type == "ByteLevel") {
    if (fused) r.at("type").fail("a ByteLevel decoder after tokens were fused is not supported");
    step.kind = DecoderStep::ByteLevel;
    fused = true;
  } else if (type == "ByteFallback") {
    if (fused) r.at("type").fail("a ByteFallback decoder after tokens were fused is not supported");
    step.kind = DecoderStep::ByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Fuse;
    fused = true;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Replace;
    const JsonReader pattern = r.at("pattern");
    if (!pattern.has("String")) pattern.fail("unsupported pattern (only {\"String\": ...} is supported)");
    step.pattern = pattern.requireString("String");
    step.content = r.requireString("content");
    if (step.pattern.empty()) pattern.at("String").fail("empty pattern");
    if (fused && countCodePoints(step.pattern) != 1) {
      pattern.at("String").fail("a Replace of more than one character after tokens were fused is not supported");
    }
  } else if (type == "Strip") {
    step.kind = DecoderStep::Strip;
    step.content = r.requireString("content");
    singleCodePoint(r.at("content"), step.content);
    step.start = static_cast<std::size_t>(r.getIntIn("start", 0, 0, 1 << 20));
    step.stop = static_cast<std::size_t>(r.getIntIn("stop", 0, 0, 1 << 20));
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Metaspace;
    step.replacement = r.getString("replacement", "\xE2\x96\x81");
    singleCodePoint(r.has("replacement") ? r.at("replacement") : r, step.replacement);
    std::string scheme = r.getString("prepend_scheme", "");
    if (scheme.empty()) scheme = r.getBool("add_prefix_space", true) ? "always" : "never";
    step.drop_first = scheme != "never";
  } else {
    unsupportedType(r, type, "Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace");
  }
  decoder.push_back(step);
}

void Tokenizer::Impl::finishLoading() {
  for (std::size_t i = 0; i < added.size(); ++i) {
    if (added[i].normalized) {
      added[i].decode_text = normalize(added[i].content);
      normalized_matcher.add(added[i].decode_text, i);
    } else {
      added[i].decode_text = added[i].content;
      raw_matcher.add(added[i].content, i);
    }
  }
  raw_matcher.finalize();
  normalized_matcher.finalize();
  std::int32_t max_id = -1;
  for (const auto& [id, token] : vocab_r) max_id = std::max(max_id, id);
  for (const AddedToken& t : added) max_id = std::max(max_id, t.id);
  vocab_size = max_id + 1;
  if (!prefix_ids.empty() && isSpecialId(prefix_ids.front())) bos = prefix_ids.front();
  for (const char* name : {"</s>", "<|end_of_text|>", "<|endoftext|>"}) {
    if (eos) break;
    const auto it = added_by_content.find(name);
    if (it != added_by_content.end()) eos = added[it->second].id;
    else if (const auto v = vocab.find(name); v != vocab.end()) eos = v->second;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::string Tokenizer::Impl::normalize(std::string_view s) const {
  std::string out(s);
  for (const NormalizerStep& step : normalizer) {
    if (step.kind == NormalizerStep::Prepend) {
      if (!out.empty()) out = step.text + out;
    } else if (step.kind == NormalizerStep::ByteLevel) {
      std::string mapped;
      for (const char ch : out) mapped += byteLevelMap().byte_to_text[static_cast<unsigned char>(ch)];
      out = std::move(mapped);
    } else {
      out = replaceAll(out, step.text, step.content);
    }
  }
  return out;
}

void Tokenizer::Impl::splitAdded(const Piece& piece, const AddedTokenMatcher& matcher, bool parse_special,
                                 std::vector<std::variant<std::int32_t, Piece>>& out) const {
  const std::string_view s = piece.text;
  std::size_t emitted = 0;  // end of what is already in `out`
  std::size_t from = 0;
  auto isWordChar = [](char32_t cp) { return cp == U'_' || classify(cp) == CharClass::Letter || classify(cp) == CharClass::Number; };
  auto lastCodePoint = [&](std::size_t end) {
    std::size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return std::pair{decodeAt(s, i, utf8Step(s, i)), i};
  };
  while (const auto match = matcher.find(s, from)) {
    from = match->end;
    const AddedToken& token = added[match->token];
    if (token.special && !parse_special) continue;
    std::size_t start = match->start, stop = match->end;
    if (token.single_word) {
      const bool word_before = start > 0 && isWordChar(lastCodePoint(start).first);
      const bool word_after = stop < s.size() && isWordChar(decodeAt(s, stop, utf8Step(s, stop)));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      while (start > emitted) {
        const auto [cp, at] = lastCodePoint(start);
        if (!isWhitespace(cp)) break;
        start = at;
      }
    }
    if (token.rstrip) {
      while (stop < s.size()) {
        const int length = utf8Step(s, stop);
        if (!isWhitespace(decodeAt(s, stop, length))) break;
        stop += static_cast<std::size_t>(length);
      }
      from = stop;
    }
    if (start > emitted) out.emplace_back(Piece{std::string(s.substr(emitted, start - emitted)), piece.at_start && emitted == 0});
    out.emplace_back(token.id);
    emitted = stop;
  }
  if (emitted < s.size()) out.emplace_back(Piece{std::string(s.substr(emitted)), piece.at_start && emitted == 0});
}

std::vector<std::string> Tokenizer::Impl::preTokenize(Piece piece) const {
  std::vector<Piece> pieces{std::move(piece)};
  const ByteLevelMap& bytes = byteLevelMap();
  for (const PreTokenizerStep& step : pre_tokenizer) {
    std::vector<Piece> next;
    for (Piece& p : pieces) {
      switch (step.kind) {
        case PreTokenizerStep::Split: {
          bool first = p.at_start;
          for (std::string& s : splitPattern(p.text, step.pattern)) next.push_back({std::move(s), std::exchange(first, false)});
          break;
        }
        case PreTokenizerStep::ByteLevel: {
          // Prepending to an empty text does nothing (NormalizedString::prepend).
          if (step.add_prefix_space && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, 1, ' ');
          std::vector<std::string> parts;
          if (step.use_regex) parts = splitPattern(p.text, SplitPattern::Gpt2);
          else parts.push_back(std::move(p.text));
          bool first = p.at_start;
          for (const std::string& s : parts) {
            std::string mapped;
            for (const char ch : s) mapped += bytes.byte_to_text[static_cast<unsigned char>(ch)];
            next.push_back({std::move(mapped), std::exchange(first, false)});
          }
          break;
        }
        case PreTokenizerStep::Metaspace: {
          std::string s = replaceAll(p.text, " ", step.replacement);
          const bool starts = s.rfind(step.replacement, 0) == 0;
          if (!starts && !s.empty() && (step.prepend == PreTokenizerStep::Always ||
                          (step.prepend == PreTokenizerStep::First && p.at_start))) {
            s = step.replacement + s;
          }
          if (!step.split) {
            next.push_back({std::move(s), p.at_start});
            break;
          }
          // Split before every replacement character (MergedWithNext).
          bool first = p.at_start;
          std::size_t begin = 0;
          for (std::size_t at = s.find(step.replacement, 1); at != std::string::npos;
               at = s.find(step.replacement, at + 1)) {
            next.push_back({s.substr(begin, at - begin), std::exchange(first, false)});
            begin = at;
          }
          next.push_back({s.substr(begin), std::exchange(first, false)});
          break;
        }
      }
    }
    std::erase_if(next, [](const Piece& p) { return p.text.empty(); });
    pieces = std::move(next);
  }
  std::vector<std::string> words;
  words.reserve(pieces.size());
  for (Piece& p : pieces) {
    if (!p.text.empty()) words.push_back(std::move(p.text));
  }
  return words;
}

// Hugging Face's BPE::merge_word and Word::merge_all, step for step (the same ties, the same
// treatment of stale queue entries).
std::vector<std::int32_t> Tokenizer::Impl::bpeUncached(const std::string& word) const {
  struct Symbol {
    std::int32_t id;
    std::ptrdiff_t prev, next;
    std::size_t len;
  };
  std::vector<Symbol> symbols;
  auto push = [&](std::int32_t id, std::size_t len) {
    const auto index = static_cast<std::ptrdiff_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, len});
  };
  bool unk_pending = false;  // an unknown character not yet pushed (fused with the next ones)
  std::int32_t unk_pending_id = 0;
  std::size_t unk_pending_len = 0;
  for (std::size_t i = 0; i < word.size();) {
    const auto length = static_cast<std::size_t>(utf8Step(word, i));
    const std::string ch = word.substr(i, length);
    i += length;
    if (const auto it = vocab.find(ch); it != vocab.end()) {
      if (unk_pending) push(unk_pending_id, unk_pending_len);
      unk_pending = false;
      push(it->second, length);
      continue;
    }
    if (byte_fallback && std::all_of(ch.begin(), ch.end(), [&](char b) { return byte_ids[static_cast<unsigned char>(b)] >= 0; })) {
      for (const char b : ch) push(byte_ids[static_cast<unsigned char>(b)], 1);
      continue;  // as Hugging Face: a pending unknown stays pending
    }
    if (unk_id) {
      if (unk_pending && fuse_unk) {
        unk_pending_len += length;
      } else {
        if (unk_pending) push(unk_pending_id, unk_pending_len);
        unk_pending = true;
        unk_pending_id = *unk_id;
        unk_pending_len = length;
      }
    }
  }
  if (unk_pending) push(unk_pending_id, unk_pending_len);
  if (!symbols.empty()) symbols.back().next = -1;

  struct Merge {
    std::size_t pos;
    std::int32_t rank, new_id;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Merge> queue;
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto it = merges.find(pairKey(symbols[i].id, symbols[i + 1].id)); it != merges.end()) {
      queue.push({i, it->second.first, it->second.second});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next == -1) continue;
    const auto next_pos = static_cast<std::size_t>(current.next);
    const Symbol right = symbols[next_pos];
    const auto it = merges.find(pairKey(current.id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;
    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && static_cast<std::size_t>(right.next) < symbols.size()) {
      symbols[static_cast<std::size_t>(right.next)].prev = static_cast<std::ptrdiff_t>(top.pos);
    }
    if (current.prev >= 0) {
      const auto prev = static_cast<std::size_t>(current.prev);
      if (const auto m = merges.find(pairKey(symbols[prev].id, current.id)); m != merges.end()) {
        queue.push({prev, m->second.first, m->second.second});
      }
    }
    if (current.next > -1 && static_cast<std::size_t>(current.next) < symbols.size()) {
      const auto nxt = static_cast<std::size_t>(current.next);
      if (const auto m = merges.find(pairKey(current.id, symbols[nxt].id)); m != merges.end()) {
        queue.push({top.pos, m->second.first, m->second.second});
      }
    }
  }
  std::vector<std::int32_t> ids;
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids.push_back(s.id);
  }
  return ids;
}

void Tokenizer::Impl::bpe(const std::string& word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  {
    std::lock_guard lock(cache_mutex);
    if (const auto it = word_cache.find(word); it != word_cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  if (ignore_merges) {
    if (const auto it = vocab.find(word); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<std::int32_t> ids = bpeUncached(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (word.size() < kWordCacheMaxBytes) {
    std::lock_guard lock(cache_mutex);
    if (word_cache.size() < kWordCacheCapacity) word_cache.emplace(word, std::move(ids));
  }
}

std::vector<std::int32_t> Tokenizer::Impl::encode(std::string_view text, bool add_special_tokens,
                                                  bool parse_special) const {
  for (std::size_t i = 0; i < text.size();) {
    const int step = utf8Step(text, i);
    if (step <= 0) throw InvalidTextError("text is not valid UTF-8 (at byte " + std::to_string(i) + ")");
    i += static_cast<std::size_t>(step);
  }
  std::vector<std::int32_t> ids;
  if (add_special_tokens) ids = prefix_ids;
  std::vector<std::variant<std::int32_t, Piece>> raw;
  splitAdded(Piece{std::string(text), true}, raw_matcher, parse_special, raw);
  for (auto& part : raw) {
    if (const auto* id = std::get_if<std::int32_t>(&part)) {
      ids.push_back(*id);
      continue;
    }
    Piece& piece = std::get<Piece>(part);
    std::vector<std::variant<std::int32_t, Piece>> normalized;
    splitAdded(Piece{normalize(piece.text), piece.at_start}, normalized_matcher, parse_special, normalized);
    for (auto& sub : normalized) {
      if (const auto* id = std::get_if<std::int32_t>(&sub)) {
        ids.push_back(*id);
        continue;
      }
      for (const std::string& word : preTokenize(std::move(std::get<Piece>(sub)))) bpe(word, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids.begin(), suffix_ids.end());
  return ids;
}

std::optional<std::string> Tokenizer::Impl::idToToken(std::int32_t id) const {
  if (const auto it = added_by_id.find(id); it != added_by_id.end()) return added[it->second].decode_text;
  if (const auto it = vocab_r.find(id); it != vocab_r.end()) return it->second;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Decoding: the decoder steps as a stream. Each step takes a token (or, after a Fuse, a piece of
// the one fused token) and passes what it can to the next; finish() flushes in order.

struct StreamDecoder::State {
  const Tokenizer::Impl* impl;
  struct StepState {
    std::size_t tokens = 0;      // tokens seen (Metaspace, JoinWithSpace)
    std::string bytes;           // ByteLevel: an unfinished character; ByteFallback: the byte run
    std::size_t start_left = 0;  // Strip after Fuse: leading characters still to strip
    bool start_done = false;
    std::string held;  // Strip after Fuse: trailing characters held back
  };
  std::vector<DecoderStep> steps;
  std::vector<StepState> states;
  std::string out;

  void reset() {
    states.assign(steps.size(), StepState{});
    for (std::size_t k = 0; k < steps.size(); ++k) states[k].start_left = steps[k].start;
  }

  void feed(std::size_t k, std::string token) {
    if (k == steps.size()) {
      out += token;
      return;
    }
    const DecoderStep& step = steps[k];
    StepState& st = states[k];
    switch (step.kind) {
      case DecoderStep::Fuse:
        feed(k + 1, std::move(token));
        return;
      case DecoderStep::Replace:
        feed(k + 1, replaceAll(token, step.pattern, step.content));
        return;
      case DecoderStep::JoinWithSpace:
        feed(k + 1, st.tokens++ == 0 ? std::move(token) : " " + token);
        return;
      case DecoderStep::Metaspace: {
        const bool first = step.after_fuse || st.tokens++ == 0;
        feed(k + 1, replaceAll(token, step.replacement, first && step.drop_first ? "" : " "));
        return;
      }
      case DecoderStep::ByteLevel: {
        const auto& map = byteLevelMap().char_to_byte;
        std::string decoded;
        bool all_mapped = true;
        for (std::size_t i = 0; i < token.size() && all_mapped;) {
          const int length = utf8Step(token, i);
          const auto it = map.find(decodeAt(token, i, length));
          if (it == map.end()) all_mapped = false;
          else decoded += static_cast<char>(it->second);
          i += static_cast<std::size_t>(length);
        }
        st.bytes += all_mapped ? decoded : token;
        feed(k + 1, takeLossyUtf8(st.bytes, false));
        return;
      }
      case DecoderStep::ByteFallback: {
        if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' && std::isxdigit(static_cast<unsigned char>(token[3])) &&
            std::isxdigit(static_cast<unsigned char>(token[4]))) {
          st.bytes += static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16));
          return;
        }
        flushByteRun(k);
        feed(k + 1, std::move(token));
        return;
      }
      case DecoderStep::Strip:
        if (!step.after_fuse) {
          feed(k + 1, stripToken(step, token));
          return;
        }
        feed(k + 1, stripStream(step, st, std::move(token)));
        return;
    }
  }

  void flushByteRun(std::size_t k) {
    StepState& st = states[k];
    if (st.bytes.empty()) return;
    std::string run = std::move(st.bytes);
    st.bytes.clear();
    if (isValidUtf8(run)) {
      feed(k + 1, std::move(run));
    } else {
      for (std::size_t i = 0; i < run.size(); ++i) feed(k + 1, kReplacementChar);
    }
  }

  static std::string stripToken(const DecoderStep& step, const std::string& token) {
    std::size_t begin = 0, end = token.size();
    for (std::size_t n = 0; n < step.start && token.compare(begin, step.content.size(), step.content) == 0; ++n) {
      begin += step.content.size();
    }
    for (std::size_t n = 0; n < step.stop && end >= begin + step.content.size() &&
                            token.compare(end - step.content.size(), step.content.size(), step.content) == 0;
         ++n) {
      end -= step.content.size();
    }
    return token.substr(begin, end - begin);
  }

  static std::string stripStream(const DecoderStep& step, StepState& st, std::string piece) {
    const std::string& c = step.content;
    if (!st.start_done) {
      std::size_t begin = 0;
      while (st.start_left > 0 && piece.compare(begin, c.size(), c) == 0) {
        begin += c.size();
        --st.start_left;
      }
      if (begin < piece.size() || st.start_left == 0) st.start_done = true;
      piece.erase(0, begin);
    }
    if (step.stop == 0) return piece;
    std::string text = st.held + piece;
    std::size_t end = text.size(), held = 0;
    while (held < step.stop && end >= c.size() && text.compare(end - c.size(), c.size(), c) == 0) {
      end -= c.size();
      ++held;
    }
    st.held = text.substr(end);
    return text.substr(0, end);
  }

  void finishFrom(std::size_t k) {
    for (; k < steps.size(); ++k) {
      StepState& st = states[k];
      switch (steps[k].kind) {
        case DecoderStep::ByteLevel:
          if (!st.bytes.empty()) feed(k + 1, takeLossyUtf8(st.bytes, true));
          break;
        case DecoderStep::ByteFallback:
          flushByteRun(k);
          break;
        default:
          break;  // a Strip's held trailing characters are dropped
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Public API

namespace {

std::shared_ptr<Tokenizer::Impl> loadImpl(const nlohmann::json& root, const std::string& name) {
  auto impl = std::make_shared<Tokenizer::Impl>();
  impl->source = name;
  try {
    const JsonReader r(root, "$");
    if (!r.isObject()) r.fail("expected an object");
    if (!r.has("model") || root.at("model").is_null()) r.fail("missing \"model\"");
    impl->readModel(r.at("model"));
    if (r.has("added_tokens") && !root.at("added_tokens").is_null()) impl->readAddedTokens(r.at("added_tokens"));
    if (r.has("normalizer") && !root.at("normalizer").is_null()) impl->readNormalizer(r.at("normalizer"));
    if (r.has("pre_tokenizer") && !root.at("pre_tokenizer").is_null()) impl->readPreTokenizer(r.at("pre_tokenizer"));
    if (r.has("post_processor") && !root.at("post_processor").is_null()) impl->readPostProcessor(r.at("post_processor"));
    bool fused = false;
    if (r.has("decoder") && !root.at("decoder").is_null()) {
      impl->readDecoder(r.at("decoder"), fused);
    } else {
      DecoderStep join;
      join.kind = DecoderStep::JoinWithSpace;
      impl->decoder.push_back(join);
    }
    impl->finishLoading();
  } catch (const ConfigError& e) {
    throw ConfigError(name + ": " + e.what());
  }
  return impl;
}

}  // namespace

// Hugging Face skips a token in decode when its text is the content of a special token.
bool Tokenizer::Impl::isSpecialText(const std::string& token) const {
  const auto it = added_by_content.find(token);
  return it != added_by_content.end() && added[it->second].special;
}

bool Tokenizer::Impl::isSpecialId(std::int32_t id) const {
  const auto it = added_by_id.find(id);
  return it != added_by_id.end() && added[it->second].special;
}

Tokenizer Tokenizer::fromJsonText(const std::string& json_text, const std::string& name) {
  return Tokenizer(loadImpl(parseJsonText(json_text, name), name));
}

Tokenizer Tokenizer::fromFile(const std::string& path) { return Tokenizer(loadImpl(readJsonFile(path), path)); }

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens, bool parse_special) const {
  return impl_->encode(text, add_special_tokens, parse_special);
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  StreamDecoder stream(*this, skip_special_tokens);
  std::string out;
  for (const std::int32_t id : ids) out += stream.push(id);
  out += stream.finish();
  return out;
}

std::int32_t Tokenizer::vocabSize() const { return impl_->vocab_size; }

std::optional<std::int32_t> Tokenizer::tokenId(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added_by_content.find(key); it != impl_->added_by_content.end()) {
    return impl_->added[it->second].id;
  }
  if (const auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::tokenString(std::int32_t id) const {
  if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  return impl_->idToToken(id);
}
bool Tokenizer::isSpecial(std::int32_t id) const { return impl_->isSpecialId(id); }
std::optional<std::int32_t> Tokenizer::bosId() const { return impl_->bos; }
std::optional<std::int32_t> Tokenizer::eosId() const { return impl_->eos; }

Tokenizer loadTokenizerFolder(const std::string& folder) {
  const std::filesystem::path dir(folder);
  const std::string json_path = (dir / "tokenizer.json").string();
  auto impl = loadImpl(readJsonFile(json_path), json_path);
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) return Tokenizer(impl);
  const std::string config_name = config_path.string();
  const nlohmann::json root = readJsonFile(config_name);
  try {
    const JsonReader config(root, "$");
    if (!config.isObject()) config.fail("expected an object");
    Tokenizer probe(impl);
    auto idOf = [&](const std::string& key) -> std::optional<std::int32_t> {
      const auto token = configToken(config, key);
      if (!token) return std::nullopt;
      const auto id = probe.tokenId(*token);
      if (!id) config.at(key).fail("\"" + *token + "\" is not a token of " + json_path);
      return id;
    };
    if (const auto bos = idOf("bos_token")) impl->bos = bos;
    if (const auto eos = idOf("eos_token")) impl->eos = eos;
    if (config.has("add_bos_token") && !root.at("add_bos_token").is_null()) {
      const bool add = config.at("add_bos_token").asBool();
      const bool has = !impl->prefix_ids.empty() && impl->bos && impl->prefix_ids.front() == *impl->bos;
      if (add && !has) {
        if (!impl->bos) config.at("add_bos_token").fail("no bos_token to add");
        impl->prefix_ids.insert(impl->prefix_ids.begin(), *impl->bos);
      } else if (!add && has) {
        impl->prefix_ids.erase(impl->prefix_ids.begin());
      }
    }
    if (config.has("add_eos_token") && !root.at("add_eos_token").is_null()) {
      const bool add = config.at("add_eos_token").asBool();
      const bool has = !impl->suffix_ids.empty() && impl->eos && impl->suffix_ids.back() == *impl->eos;
      if (add && !has) {
        if (!impl->eos) config.at("add_eos_token").fail("no eos_token to add");
        impl->suffix_ids.push_back(*impl->eos);
      } else if (!add && has) {
        impl->suffix_ids.pop_back();
      }
    }
  } catch (const ConfigError& e) {
    throw ConfigError(config_name + ": " + e.what());
  }
  return Tokenizer(impl);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_), skip_special_tokens_(skip_special_tokens), state_(std::make_unique<State>()) {
  state_->impl = impl_.get();
  state_->steps = impl_->decoder;
  state_->reset();
}
StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;

std::string StreamDecoder::push(std::int32_t id) {
  const auto token = impl_->idToToken(id);
  if (!token || (skip_special_tokens_ && impl_->isSpecialText(*token))) return {};
  state_->feed(0, *token);
  return std::exchange(state_->out, {});
}

std::string StreamDecoder::finish() {
  state_->finishFrom(0);
  std::string out = std::exchange(state_->out, {});
  state_->reset();
  return out;
}

}  // namespace computron::text
