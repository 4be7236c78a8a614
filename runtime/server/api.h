// The OpenAI-compatible request and response shapes of `computron serve`: reading a completion or
// chat completion body into a typed request (every refusal names its field, in OpenAI's error
// shape), and writing responses, stream chunks and errors. Pure functions: no sockets, no engine.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/deployment.h"
#include "common/text/chat_template.h"
#include "common/text/tokenizer.h"
#include "common/types.h"

namespace computron::server {

// An error as OpenAI sends it: {"error": {"message", "type", "param", "code"}}, with its HTTP status.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field ("" = none)
  std::string code;   // a short machine-readable code ("" = null)
};
std::string errorBody(const ApiError& error);

// A model's text side, read from its folder: the tokenizer (tokenizer.json), its chat template
// (absent: the documented plain template) and the special tokens the template uses.
struct TextModel {
  text::Tokenizer tokenizer;
  std::optional<text::ChatTemplate> chat_template;
  text::SpecialTokens special;
  std::string folder;
};
// Reads `folder` (tokenizer.json, tokenizer_config.json, chat_template.jinja); ConfigError naming
// the file on anything malformed.
std::shared_ptr<const TextModel> loadTextModel(const std::string& folder);

// What the server knows of a model to check a request against it.
struct ModelInfo {
  std::string name;
  int vocab = 0;
  int max_positions = 0;  // prompt + output tokens at most this many (0: no limit)
  std::shared_ptr<const TextModel> text;  // null: token ids only
};

struct CompletionRequest {
  bool chat = false;
  ModelId model = 0;
  std::vector<std::int32_t> prompt;  // token ids (text: tokenized; chat: rendered with the template, then tokenized)
  int max_tokens = 16;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  std::uint64_t seed = 0;      // the sampler's stream (placeholder ids are drawn from it and the prompt)
  float temperature = 1.f;     // OpenAI's default; 0: greedy
  float top_p = 1.f;
  int top_k = 0;                            // vLLM's extension; 0: no limit
  std::vector<std::int32_t> stop_token_ids;  // vLLM's extension: sampling one ends the request
  bool ignore_eos = false;                   // vLLM's extension: do not stop at the model's end-of-sequence id
  std::vector<std::string> stop;             // text that ends the output (not included); needs a tokenizer
};

struct ParsedCompletion {
  std::optional<CompletionRequest> request;
  ApiError error;  // when request is empty
};

// Reads a POST /v1/completions (chat = false) or /v1/chat/completions body. Refuses broken JSON,
// unknown fields, wrong types, unknown models, text prompts (no tokenizer is loaded), token ids
// outside the vocabulary and prompts that with max_tokens exceed the model's positions.
ParsedCompletion parseCompletion(const std::string& body, bool chat, const std::vector<ModelInfo>& models);

// The placeholder token ids of a request: deterministic in (seed, prompt), in [0, vocab).
std::vector<std::int32_t> placeholderTokens(const CompletionRequest& request, int count, int vocab);

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Whole (non-streamed) response; `text` is the decoded output ("" without a tokenizer).
nlohmann::json completionResponse(const CompletionRequest& request, const std::string& id, const std::string& model,
                                  std::int64_t created, const std::vector<std::int32_t>& tokens,
                                  const std::string& finish_reason = "length", const std::string& text = "");
// One server-sent event chunk carrying `tokens` and their `text` (finish: the last one, with
// finish_reason).
nlohmann::json completionChunk(const CompletionRequest& request, const std::string& id, const std::string& model,
                               std::int64_t created, const std::vector<std::int32_t>& tokens, bool finish,
                               const std::string& finish_reason = "length", const std::string& text = "");

// The output text of a request as tokens arrive: decodes incrementally and ends it at the first
// of the request's stop strings (the stop string itself is not part of the output).
class OutputText {
 public:
  OutputText(std::shared_ptr<const TextModel> text, std::vector<std::string> stop);
  // The text `id` adds that is certain not to be part of a stop string; sets stopped().
  std::string push(std::int32_t id);
  // What is held back, at the end of the output (empty once stopped).
  std::string finish();
  bool stopped() const { return stopped_; }
  bool enabled() const { return text_ != nullptr; }

 private:
  std::shared_ptr<const TextModel> text_;
  std::optional<text::StreamDecoder> decoder_;
  std::vector<std::string> stop_;
  std::string pending_;  // decoded, not yet released: may be the start of a stop string
  bool stopped_ = false;
};
// The usage-only chunk sent last when stream_options.include_usage is set.
nlohmann::json usageChunk(const CompletionRequest& request, const std::string& id, const std::string& model,
                          std::int64_t created, int completion_tokens);

}  // namespace computron::server
