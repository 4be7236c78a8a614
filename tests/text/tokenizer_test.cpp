// The tokenizer against tiny hand-made tokenizer.json files, one per family the project serves,
// with ids computed by hand (the comments show the merges as they apply).
#include "common/text/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/types.h"

namespace computron::text {
namespace {

using Ids = std::vector<std::int32_t>;
using nlohmann::json;

// GPT-2's byte-to-character map, written out independently of the library's.
std::string byteChar(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

json specialToken(int id, const std::string& content, bool special = true, bool normalized = false) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
          {"normalized", normalized}, {"special", special}};
}

// OPT style: GPT-2 byte-level BPE; <s> <pad> </s> <unk> are 0..3, byte b is 4 + b; `</s>` is BOS.
json optStyle() {
  json vocab = {{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}};
  for (int b = 0; b < 256; ++b) vocab[byteChar(b)] = 4 + b;
  vocab["he"] = 260;
  vocab["Ġt"] = 261;
  vocab["Ġthe"] = 262;
  vocab["ll"] = 263;
  vocab["the"] = 264;
  vocab["hell"] = 265;
  vocab["el"] = 266;
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {specialToken(0, "<s>"), specialToken(1, "<pad>"), specialToken(2, "</s>"), specialToken(3, "<unk>"),
        specialToken(267, "<tool>", /*special=*/false)}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", json::array()},
        {"special_tokens", {{"</s>", {{"id", "</s>"}, {"ids", {2}}, {"tokens", {"</s>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        // "e l" ranks last: "hello" must become "hell" "o", not "h" "el" ...
        {"merges", {"h e", "Ġ t", "Ġt he", "l l", "t he", "he ll", "e l"}}}}};
}

json pairs(std::initializer_list<std::pair<const char*, const char*>> list) {
  json out = json::array();
  for (const auto& [a, b] : list) out.push_back(json::array({a, b}));
  return out;
}

// Llama 3 style: byte b is id b; ignore_merges; <|begin_of_text|> is BOS.
json llama3Style(bool ignore_merges = true) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byteChar(b)] = b;
  vocab["Ġt"] = 256;
  vocab["he"] = 257;
  vocab["Ġthe"] = 258;
  vocab["ll"] = 259;
  vocab["34"] = 260;
  vocab["'L"] = 262;
  vocab["ĊĊ"] = 263;
  vocab["ĊĠ"] = 264;
  vocab["Ġhello"] = 300;  // no merges make it: only ignore_merges finds it
  const std::string split_regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return {
      {"version", "1.0"},
      {"added_tokens",
       {specialToken(400, "<|begin_of_text|>"), specialToken(401, "<|eot_id|>"),
        specialToken(402, "<|start_header_id|>"), specialToken(403, "<|end_header_id|>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", split_regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
          {{"type", "TemplateProcessing"},
           {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
           {"pair", json::array()},
           {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {400}}, {"tokens", {"<|begin_of_text|>"}}}}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", ignore_merges},
        {"vocab", vocab},
        // The pairs format of newer files.
        {"merges", pairs({{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"l", "l"}, {"3", "4"}, {"Ċ", "Ġ"}, {"Ċ", "Ċ"}, {"'", "L"}})}}}};
}

// Llama 2 style: <unk> <s> </s>, then <0x00>..<0xFF> as 3..258, then the pieces.
json llama2Style(bool byte_fallback = true, bool fuse_unk = true) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) vocab[std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">"] = 3 + b;
  const char* pieces[] = {"▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "llo", "▁hello"};
  int id = 259;
  for (const char* p : pieces) vocab[p] = id++;  // ▁ 259, h 260, e 261, l 262, o 263, w 264, r 265, d 266, ▁h 267, ll 268, ▁he 269, llo 270, ▁hello 271
  return {
      {"version", "1.0"},
      {"added_tokens", {specialToken(0, "<unk>"), specialToken(1, "<s>"), specialToken(2, "</s>")}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "▁"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", fuse_unk},
        {"byte_fallback", byte_fallback},
        {"vocab", vocab},
        {"merges", {"▁ h", "l l", "▁h e", "ll o", "▁he llo"}}}}};
}

// The newer Llama 2 files: Metaspace (prepend_scheme first) instead of the normalizer.
json llama2Metaspace() {
  json j = llama2Style();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  return j;
}

Tokenizer load(const json& j) { return Tokenizer::fromJsonText(j.dump(), "tokenizer.json"); }

std::string streamed(const Tokenizer& t, const Ids& ids, bool skip_special = true) {
  StreamDecoder stream(t, skip_special);
  std::string out;
  for (const std::int32_t id : ids) out += stream.push(id);
  return out + stream.finish();
}

// --- OPT style -------------------------------------------------------------------------------

TEST(TokenizerOpt, MergesApplyInRankOrder) {
  const Tokenizer t = load(optStyle());
  // "hello": h e (rank 0) -> [he l l o]; l l (3) -> [he ll o]; he ll (5) -> [hell o]. ("e l", rank
  // 6, never gets its turn.) "o" is byte 111 -> id 115.
  EXPECT_EQ(t.encode("hello", false), (Ids{265, 115}));
  // " the" -> "Ġthe": h e (0), then Ġ t (1), then Ġt he (2).
  EXPECT_EQ(t.encode(" the", false), (Ids{262}));
  // "the hello" -> "the" "Ġhello": t he (4); Ġ (36) hell o.
  EXPECT_EQ(t.encode("the hello", false), (Ids{264, 36, 265, 115}));
}

TEST(TokenizerOpt, TemplateProcessingAddsBos) {
  const Tokenizer t = load(optStyle());
  EXPECT_EQ(t.encode("the"), (Ids{2, 264}));
  EXPECT_EQ(t.encode(""), (Ids{2}));
  EXPECT_EQ(t.encode("", false), (Ids{}));
  EXPECT_EQ(t.bosId(), 2);
  EXPECT_EQ(t.eosId(), 2);
  EXPECT_EQ(t.vocabSize(), 268);
}

TEST(TokenizerOpt, Gpt2RegexSplits) {
  const Tokenizer t = load(optStyle());
  // Contractions: "I" "'ll" -> I (73+4), ' (39+4), ll.
  EXPECT_EQ(t.encode("I'll", false), (Ids{77, 43, 263}));
  // Whitespace runs: "a", "  " less its last space, " b" -> a, Ġ, Ġ b.
  EXPECT_EQ(t.encode("a   b", false), (Ids{101, 36, 36, 36, 102}));
  // Digits stay together, "12" "!" -> the regex keeps " ?\p{N}+".
  EXPECT_EQ(t.encode("x 12!", false), (Ids{124, 36, 53, 54, 37}));
}

TEST(TokenizerOpt, SpecialTokensSplitOnlyWhenParsed) {
  const Tokenizer t = load(optStyle());
  EXPECT_EQ(t.encode("the</s>hello", false), (Ids{264, 2, 265, 115}));
  // Not parsed: "the" "</" "s" ">" "hello" as text.
  EXPECT_EQ(t.encode("the</s>hello", false, false), (Ids{264, 64, 51, 119, 66, 265, 115}));
  // A non-special added token splits either way.
  EXPECT_EQ(t.encode("the<tool>the", false, false), (Ids{264, 267, 264}));
  EXPECT_EQ(t.tokenId("<tool>"), 267);
  EXPECT_EQ(t.tokenId("Ġthe"), 262);
  EXPECT_FALSE(t.tokenId("nope").has_value());
  EXPECT_TRUE(t.isSpecial(2));
  EXPECT_FALSE(t.isSpecial(267));
}

TEST(TokenizerOpt, RobertaProcessingWrapsTheText) {
  json j = optStyle();
  j["post_processor"] = {{"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 0}},
                         {"trim_offsets", true}, {"add_prefix_space", false}};
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("the"), (Ids{0, 264, 2}));
  EXPECT_EQ(t.bosId(), 0);
}

TEST(TokenizerOpt, AddedTokenStripAndSingleWord) {
  json j = optStyle();
  json mask = specialToken(268, "<mask>");
  mask["lstrip"] = true;
  mask["rstrip"] = true;
  json hell = specialToken(269, "hell", /*special=*/false);
  hell["single_word"] = true;
  j["added_tokens"].push_back(mask);
  j["added_tokens"].push_back(hell);
  const Tokenizer t = load(j);
  // The spaces around <mask> belong to it: "the", <mask>, "the" (not "Ġthe").
  EXPECT_EQ(t.encode("the  <mask> the", false), (Ids{264, 268, 264}));
  // "hell" alone is the added token; inside "hello" it is not.
  EXPECT_EQ(t.encode("hell o", false), (Ids{269, 36, 115}));
  EXPECT_EQ(t.encode("hello", false), (Ids{265, 115}));
}

TEST(TokenizerOpt, DecodeSkipsSpecialTokensOnRequest) {
  const Tokenizer t = load(optStyle());
  const Ids ids{2, 264, 36, 265, 115, 267};
  EXPECT_EQ(t.decode(ids), "the hello<tool>");
  EXPECT_EQ(t.decode(ids, false), "</s>the hello<tool>");
  EXPECT_EQ(t.decode(Ids{264, 99999, -1}), "the");  // unknown ids are skipped
}

TEST(TokenizerOpt, InvalidUtf8IsRefused) {
  const Tokenizer t = load(optStyle());
  EXPECT_THROW(t.encode("ab\xC3"), InvalidTextError);
  EXPECT_THROW(t.encode("\xED\xA0\x80"), InvalidTextError);  // a surrogate
  try {
    t.encode("ab\xFF");
    FAIL();
  } catch (const InvalidTextError& e) {
    EXPECT_NE(std::string(e.what()).find("at byte 2"), std::string::npos) << e.what();
  }
}

TEST(TokenizerOpt, DecodeReplacesInvalidBytesAsHuggingFace) {
  const Tokenizer t = load(optStyle());
  // E2 82 then "A": one U+FFFD for the cut-off sequence; a lone FF: one U+FFFD.
  EXPECT_EQ(t.decode(Ids{4 + 0xE2, 4 + 0x82, 4 + 'A'}), "\xEF\xBF\xBD" "A");
  EXPECT_EQ(t.decode(Ids{4 + 0xFF, 4 + 'A'}), "\xEF\xBF\xBD" "A");
  EXPECT_EQ(t.decode(Ids{4 + 'A', 4 + 0xE2, 4 + 0x82}), "A\xEF\xBF\xBD");
}

const std::vector<std::string>& roundTripTexts() {
  static const std::vector<std::string> texts = {
      "",
      "Hello, world!",
      "   leading and trailing   ",
      "tabs\tand\t\tmore\t",
      "line one\nline two\n\n\nthree\r\n",
      "digits 1234567 and 3.14159 and 0xFF",
      "I'll've, you're, he's, they'd, we'LL, DON'T",
      "Caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9 e\xCC\x81",  // precomposed and combining accents
      "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",  // CJK
      "emoji \xF0\x9F\x98\x80 family \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 flag "
      "\xF0\x9F\x87\xBA\xF0\x9F\x87\xB8",
      "mixed \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD8\xB3\xD9\x84\xD8\xA7\xD9\x85 \xCE\xB1\xCE\xB2\xCE\xB3",
      "nbsp\xC2\xA0here and ideographic\xE3\x80\x80space",
      "the hello the hello",
      "  \n ",
  };
  return texts;
}

TEST(TokenizerOpt, RoundTripsAndStreams) {
  const Tokenizer t = load(optStyle());
  for (const std::string& s : roundTripTexts()) {
    const Ids ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s);
    EXPECT_EQ(streamed(t, ids), s);
    EXPECT_EQ(streamed(t, ids, false), "</s>" + s);
  }
}

TEST(TokenizerOpt, StreamHoldsBackPartialCharacters) {
  const Tokenizer t = load(optStyle());
  // "€" is E2 82 AC: three byte tokens, one character.
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(4 + 'a'), "a");
  EXPECT_EQ(stream.push(4 + 0xE2), "");
  EXPECT_EQ(stream.push(4 + 0x82), "");
  EXPECT_EQ(stream.push(4 + 0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(stream.push(4 + 0xE2), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");  // cut off at the end
  EXPECT_EQ(stream.push(4 + 'b'), "b");       // starts over
}

// --- Llama 3 style ---------------------------------------------------------------------------

TEST(TokenizerLlama3, IgnoreMergesTakesWholeVocabularyWords) {
  const Tokenizer with = load(llama3Style(true));
  const Tokenizer without = load(llama3Style(false));
  // " hello" is itself in the vocabulary (300) though no merges make it.
  EXPECT_EQ(with.encode(" hello", false), (Ids{300}));
  // Without ignore_merges: Ġ, h e -> he, l l -> ll, o.
  EXPECT_EQ(without.encode(" hello", false), (Ids{32, 257, 259, 111}));
  EXPECT_EQ(with.encode("hello", false), (Ids{257, 259, 111}));
}

TEST(TokenizerLlama3, BosFromTemplateInsideSequence) {
  const Tokenizer t = load(llama3Style());
  EXPECT_EQ(t.encode("hello"), (Ids{400, 257, 259, 111}));
  EXPECT_EQ(t.bosId(), 400);
}

TEST(TokenizerLlama3, SplitPattern) {
  const Tokenizer t = load(llama3Style());
  // Numbers in groups of three: "123" "456" "7", so the merge "3 4" never applies.
  EXPECT_EQ(t.encode("1234567", false), (Ids{49, 50, 51, 52, 53, 54, 55}));
  EXPECT_EQ(t.encode("34", false), (Ids{260}));
  // Contractions ignore case: "I" "'LL" -> ' L merges.
  EXPECT_EQ(t.encode("I'LL", false), (Ids{73, 262, 76}));
  // Newlines: "a" "\n\n" " b": Ċ Ċ merges; "Ċ Ġ" (which ranks first) never meets.
  EXPECT_EQ(t.encode("a\n\n b", false), (Ids{97, 263, 32, 98}));
  EXPECT_EQ(t.encode("x\thi", false), (Ids{120, 9, 104, 105}));
}

TEST(TokenizerLlama3, SpecialTokens) {
  const Tokenizer t = load(llama3Style());
  EXPECT_EQ(t.encode("<|eot_id|>hi", false), (Ids{401, 104, 105}));
  EXPECT_EQ(t.encode("<|start_header_id|>x<|end_header_id|>", true), (Ids{400, 402, 120, 403}));
  // Not parsed: "<|" "eot" "_id" "|>" "hi".
  EXPECT_EQ(t.encode("<|eot_id|>hi", false, false), (Ids{60, 124, 101, 111, 116, 95, 105, 100, 124, 62, 104, 105}));
  EXPECT_EQ(t.decode(Ids{400, 401, 104, 105}), "hi");
  EXPECT_EQ(t.decode(Ids{400, 401, 104, 105}, false), "<|begin_of_text|><|eot_id|>hi");
}

TEST(TokenizerLlama3, ByteLevelNormalizer) {
  // Bytes mapped by the normalizer, then the Split pattern over the mapped text (where the space's
  // "Ġ" is a letter), as in tokenizers' own tests.
  json j = llama3Style();
  j["normalizer"] = {{"type", "ByteLevel"}};
  j["pre_tokenizer"] = j["pre_tokenizer"]["pretokenizers"][0];
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode(" hello", false), (Ids{300}));
  for (const std::string& s : roundTripTexts()) EXPECT_EQ(t.decode(t.encode(s)), s);
}

TEST(TokenizerLlama3, RoundTripsAndStreams) {
  const Tokenizer t = load(llama3Style());
  for (const std::string& s : roundTripTexts()) {
    const Ids ids = t.encode(s, false);
    EXPECT_EQ(t.decode(ids), s);
    EXPECT_EQ(streamed(t, ids), s);
  }
}

// --- Llama 2 style ---------------------------------------------------------------------------

TEST(TokenizerLlama2, PrependReplaceAndMerges) {
  const Tokenizer t = load(llama2Style());
  // "▁hello": ▁ h (0); l l (1); ▁h e (2); ll o (3); ▁he llo (4).
  EXPECT_EQ(t.encode("hello"), (Ids{1, 271}));
  EXPECT_EQ(t.encode("hello world", false), (Ids{271, 259, 264, 263, 265, 262, 266}));
  EXPECT_EQ(t.decode(Ids{1, 271, 259, 264, 263, 265, 262, 266}), "hello world");
  EXPECT_EQ(t.decode(Ids{1, 271}, false), "<s> hello");
}

TEST(TokenizerLlama2, ByteFallback) {
  const Tokenizer t = load(llama2Style());
  // "▁h€": € is E2 82 AC -> <0xE2> <0x82> <0xAC> = 3 + byte.
  EXPECT_EQ(t.encode("h\xE2\x82\xAC", false), (Ids{267, 229, 133, 175}));
  EXPECT_EQ(t.decode(Ids{267, 229, 133, 175}), "h\xE2\x82\xAC");
  // An invalid run of byte tokens: one U+FFFD per byte, as Hugging Face's ByteFallback.
  EXPECT_EQ(t.decode(Ids{267, 229, 133}), "h\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(Ids{267, 229, 133, 263}), "h\xEF\xBF\xBD\xEF\xBF\xBDo");
}

TEST(TokenizerLlama2, UnknownWithoutByteFallback) {
  // Two unknown characters: fused into one <unk>, or one each.
  EXPECT_EQ(load(llama2Style(false, true)).encode("h\xE2\x82\xAC\xE2\x82\xACo", false), (Ids{267, 0, 263}));
  EXPECT_EQ(load(llama2Style(false, false)).encode("h\xE2\x82\xAC\xE2\x82\xACo", false), (Ids{267, 0, 0, 263}));
}

TEST(TokenizerLlama2, SpecialTokensAndPerPieceNormalization) {
  const Tokenizer t = load(llama2Style());
  // The normalizer runs on each piece between added tokens: "hello" gets its own ▁.
  EXPECT_EQ(t.encode("<s>hello"), (Ids{1, 1, 271}));
  EXPECT_EQ(t.encode("hello</s>", false), (Ids{271, 2}));
}

TEST(TokenizerLlama2, StreamStripsOnlyTheFirstSpace) {
  const Tokenizer t = load(llama2Style());
  const Ids ids{1, 271, 259, 264, 263, 267, 229, 133, 175, 259};
  EXPECT_EQ(t.decode(ids), "hello wo h\xE2\x82\xAC ");
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(1), "");
  EXPECT_EQ(stream.push(271), "hello");
  EXPECT_EQ(stream.push(259), " ");
  EXPECT_EQ(stream.push(264), "w");
  EXPECT_EQ(stream.push(263), "o");
  EXPECT_EQ(stream.push(267), " h");
  EXPECT_EQ(stream.push(229), "");  // a run of byte tokens waits for its end
  EXPECT_EQ(stream.push(133), "");
  EXPECT_EQ(stream.push(175), "");
  EXPECT_EQ(stream.push(259), "\xE2\x82\xAC ");
  EXPECT_EQ(stream.finish(), "");
  for (const std::string& s : roundTripTexts()) {
    const Ids encoded = t.encode(s);
    EXPECT_EQ(streamed(t, encoded), t.decode(encoded)) << s;
  }
}

TEST(TokenizerLlama2, NormalizedSpecialTokenAsHuggingFace) {
  // <s> with normalized true (as in some converted files) is matched in the normalized text as
  // "▁<s>", and decodes as "▁<s>", which is not the text of a special token, so it is kept.
  json j = llama2Style();
  j["added_tokens"][1]["normalized"] = true;
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("<s>hello", false), (Ids{1, 260, 261, 270}));
  EXPECT_EQ(t.decode(Ids{1, 271}), "<s> hello");
  EXPECT_EQ(t.tokenString(1), "<s>");
}

TEST(TokenizerLlama2, MetaspaceFirst) {
  const Tokenizer t = load(llama2Metaspace());
  EXPECT_EQ(t.encode("hello world", false), (Ids{271, 259, 264, 263, 265, 262, 266}));
  // prepend_scheme first: the piece after <s> does not start the text.
  EXPECT_EQ(t.encode("<s>hello", false), (Ids{1, 260, 261, 270}));
  // The Metaspace decoder drops the ▁ of the first token only.
  EXPECT_EQ(t.decode(Ids{271, 259, 264}), "hello w");
  EXPECT_EQ(streamed(t, Ids{271, 259, 264}), "hello w");
}

// --- Loading ---------------------------------------------------------------------------------

std::string loadError(const json& j) {
  try {
    load(j);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(loaded)";
}

void expectRefused(const json& j, const std::string& part) {
  const std::string message = loadError(j);
  EXPECT_NE(message.find(part), std::string::npos) << message;
  EXPECT_EQ(message.rfind("tokenizer.json: ", 0), 0u) << message;
}

TEST(TokenizerLoad, MalformedFilesAreRefusedNamingThePath) {
  json j = optStyle();
  j.erase("model");
  expectRefused(j, "missing \"model\"");

  j = optStyle();
  j["model"]["type"] = "Unigram";
  expectRefused(j, "$.model.type: unsupported type \"Unigram\"");

  j = optStyle();
  j["model"]["merges"][2] = "Ġthe";
  expectRefused(j, "$.model.merges[2]: bad merges entry");

  j = optStyle();
  j["model"]["merges"][1] = "Ġ zz";
  expectRefused(j, "$.model.merges[1]: merge token \"zz\" is not in the vocabulary");

  j = optStyle();
  j["model"]["merges"][0] = json::array({"h"});
  expectRefused(j, "$.model.merges[0]: bad merges entry");

  j = llama3Style();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = R"(\p{L}+|\d+)";
  expectRefused(j, "$.pre_tokenizer.pretokenizers[0].pattern.Regex: unsupported pattern \\p{L}+|\\d+");

  j = llama3Style();
  j["pre_tokenizer"]["pretokenizers"][1]["type"] = "Whitespace";
  expectRefused(j, "$.pre_tokenizer.pretokenizers[1].type: unsupported type \"Whitespace\"");

  j = llama2Style();
  j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
  expectRefused(j, "$.normalizer.normalizers[1].pattern: unsupported pattern");

  j = llama2Style();
  j["normalizer"] = {{"type", "NFKC"}};
  expectRefused(j, "$.normalizer.type: unsupported type \"NFKC\"");

  j = llama2Style();
  j["decoder"]["decoders"][3] = {{"type", "CTC"}};
  expectRefused(j, "$.decoder.decoders[3].type: unsupported type \"CTC\"");

  j = optStyle();
  j["post_processor"]["single"] = json::array();
  expectRefused(j, "$.post_processor.single: the single template has no $A");

  j = optStyle();
  j["model"]["dropout"] = 0.1;
  expectRefused(j, "$.model.dropout: BPE dropout is not supported");

  EXPECT_NE(loadError(json::parse("[1, 2]")).find("expected an object"), std::string::npos);
  EXPECT_THROW(Tokenizer::fromJsonText("{\"model\": ", "tokenizer.json"), ConfigError);
}

TEST(TokenizerLoad, FolderWithConfig) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "computron-tokenizer-folder-test";
  std::filesystem::create_directories(dir);
  {
    json j = optStyle();
    j["post_processor"] = {{"type", "ByteLevel"}, {"trim_offsets", false}};  // BOS from the config instead
    std::ofstream(dir / "tokenizer.json") << j.dump();
  }
  EXPECT_EQ(loadTokenizerFolder(dir.string()).encode("the"), (Ids{264}));  // no config yet
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"add_bos_token": true, "bos_token": {"content": "</s>", "lstrip": false}, "eos_token": "</s>",
             "model_max_length": 2048})";
  const Tokenizer t = loadTokenizerFolder(dir.string());
  EXPECT_EQ(t.encode("the"), (Ids{2, 264}));
  EXPECT_EQ(t.bosId(), 2);
  EXPECT_EQ(t.eosId(), 2);
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<nope>"})";
  try {
    loadTokenizerFolder(dir.string());
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: $.bos_token: \"<nope>\" is not a token"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(TokenizerLoad, ConcurrentEncodesAgree) {
  const Tokenizer t = load(optStyle());
  const Ids expected = t.encode("the hello the hello");
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) mismatches += t.encode("the hello the hello") != expected;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace computron::text
