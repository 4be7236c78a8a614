// Text <-> token ids with a model folder's own Hugging Face `tokenizer.json`, for `computron serve`.
//
// Supported (everything else is refused when the file is read, naming the JSON path):
//   model          BPE (vocab; merges as "a b" strings or ["a", "b"] pairs; unk_token, fuse_unk,
//                  byte_fallback, ignore_merges; dropout null or 0; no subword prefix or suffix)
//   normalizer     null, Sequence, Prepend, Replace (String pattern), ByteLevel
//   pre_tokenizer  null, Sequence, ByteLevel (use_regex: the GPT-2 pattern), Metaspace,
//                  Split (Regex: the GPT-2 or the Llama 3 pattern, behavior Isolated, not inverted)
//   post_processor null, Sequence, ByteLevel, TemplateProcessing (single), RobertaProcessing,
//                  BertProcessing
//   decoder        null, Sequence, ByteLevel, ByteFallback, Fuse, Replace (String), Strip, Metaspace
//   added_tokens   special and not, normalized, lstrip, rstrip, single_word (a word character:
//                  a letter, a number or `_`)
// Quirks of `tokenizers` 0.23 kept on purpose: decode reads a normalized added token as its
// normalized text (`▁<s>` under Prepend("▁")), which is then not skipped as special; the
// normalizer runs on each piece between added tokens (each gets its own Prepend).
// `truncation` and `padding` are ignored: the server bounds prompts itself and never pads.
//
// The results are those of Hugging Face `tokenizers` (checked against its output by
// tests/text/tokenizer_golden_test.cpp). The two regular expressions are scanners over code
// points with the Unicode classes of common/text/unicode_tables.h, not a regex engine.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace computron::text {

// Text given to encode() that is not valid UTF-8 is refused (not replaced): the message names the
// byte offset. A server answers it with 400.
class InvalidTextError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class StreamDecoder;

// Immutable after loading; copies share the tables. encode() and decode() may be called from
// several threads at once (the word cache takes a lock).
class Tokenizer {
 public:
  // Reads a tokenizer.json. Throws ConfigError (common/types.h) naming the file and the JSON path
  // (`tokenizer.json: $.model.merges[3]: ...`) for anything malformed or unsupported.
  static Tokenizer fromFile(const std::string& path);
  // The same from JSON text; `name` prefixes error messages.
  static Tokenizer fromJsonText(const std::string& json_text, const std::string& name = "tokenizer.json");

  // Token ids of `text`. add_special_tokens: the post-processor's tokens (BOS, ...).
  // parse_special: special added tokens written in the text (`<|eot_id|>`) become their ids;
  // when false they are tokenized as ordinary text. Throws InvalidTextError for invalid UTF-8.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = true,
                                   bool parse_special = true) const;

  // Text of `ids`; ids the tokenizer does not know are skipped (as Hugging Face does). Invalid
  // UTF-8 that byte tokens spell becomes U+FFFD.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = true) const;

  // One past the largest id of the vocabulary and the added tokens.
  std::int32_t vocabSize() const;
  // The id of a token as written in the vocabulary (`Ġthe`, `▁the`, `<|eot_id|>`).
  std::optional<std::int32_t> tokenId(std::string_view token) const;
  // The vocabulary string of an id.
  std::optional<std::string> tokenString(std::int32_t id) const;
  bool isSpecial(std::int32_t id) const;

  // From tokenizer_config.json when loadTokenizerFolder read one; else BOS is the first special
  // token the post-processor puts before the text, and EOS the first of `</s>`,
  // `<|end_of_text|>`, `<|endoftext|>` that exists.
  std::optional<std::int32_t> bosId() const;
  std::optional<std::int32_t> eosId() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
  friend class StreamDecoder;
  friend Tokenizer loadTokenizerFolder(const std::string& folder);
};

// The tokenizer of a model folder: folder/tokenizer.json, and folder/tokenizer_config.json when
// present for bos_token, eos_token, add_bos_token and add_eos_token (a string or an
// {"content": ...} object). add_bos_token true adds BOS where the post-processor does not, false
// removes the post-processor's BOS; the same for add_eos_token at the end.
Tokenizer loadTokenizerFolder(const std::string& folder);

// Incremental decode for streaming: push() returns the text that the new id completes, holding
// back what a later id could still change (a partial UTF-8 character from byte tokens, a run of
// byte-fallback tokens, a leading space to strip). The concatenation of every push() and
// finish() equals Tokenizer::decode() of all the ids, by construction: decode() runs this.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  ~StreamDecoder();
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;

  std::string push(std::int32_t id);
  // The held-back rest; the decoder then starts over as for a new text.
  std::string finish();

 private:
  struct State;
  std::shared_ptr<const Tokenizer::Impl> impl_;
  bool skip_special_tokens_;
  std::unique_ptr<State> state_;
};

}  // namespace computron::text
