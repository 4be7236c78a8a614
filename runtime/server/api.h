// The OpenAI-compatible request and response shapes of `computron serve`: reading a completion or
// chat completion body into a typed request (every refusal names its field, in OpenAI's error
// shape), and writing responses, stream chunks and errors. Pure functions: no sockets, no engine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/deployment.h"
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

// What the server knows of a model to check a request against it.
struct ModelInfo {
  std::string name;
  int vocab = 0;
  int max_positions = 0;  // prompt + output tokens at most this many (0: no limit)
};

struct CompletionRequest {
  bool chat = false;
  ModelId model = 0;
  std::vector<std::int32_t> prompt;  // token ids (chat: the messages' ids, concatenated)
  int max_tokens = 16;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  std::uint64_t seed = 0;      // the sampler's stream (placeholder ids are drawn from it and the prompt)
  float temperature = 1.f;     // OpenAI's default; 0: greedy
  float top_p = 1.f;
  int top_k = 0;                            // vLLM's extension; 0: no limit
  std::vector<std::int32_t> stop_token_ids;  // vLLM's extension: sampling one ends the request
  bool ignore_eos = false;                   // vLLM's extension: do not stop at the model's end-of-sequence id
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

// Whole (non-streamed) response.
nlohmann::json completionResponse(const CompletionRequest& request, const std::string& id, const std::string& model,
                                  std::int64_t created, const std::vector<std::int32_t>& tokens,
                                  const std::string& finish_reason = "length");
// One server-sent event chunk carrying `tokens` (finish: the last one, with finish_reason).
nlohmann::json completionChunk(const CompletionRequest& request, const std::string& id, const std::string& model,
                               std::int64_t created, const std::vector<std::int32_t>& tokens, bool finish,
                               const std::string& finish_reason = "length");
// The usage-only chunk sent last when stream_options.include_usage is set.
nlohmann::json usageChunk(const CompletionRequest& request, const std::string& id, const std::string& model,
                          std::int64_t created, int completion_tokens);

}  // namespace computron::server
