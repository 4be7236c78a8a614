#include "runtime/server/api.h"

#include <algorithm>
#include <limits>
#include <set>

#include "common/splitmix.h"

namespace computron::server {
namespace {

using nlohmann::json;

ApiError invalid(const std::string& param, const std::string& message, int status = 400, const std::string& code = "") {
  ApiError e;
  e.status = status;
  e.param = param;
  e.message = message;
  e.code = code;
  return e;
}

const char* typeName(const json& v) { return v.type_name(); }

ApiError noTokenizer(const std::string& field, const ModelInfo& model) {
  return invalid(field, field + ": text needs a tokenizer, and model '" + model.name +
                            "' has none (serve --tokenizer NAME=FOLDER, or a --checkpoint folder with tokenizer.json); "
                            "send token ids (a list of integers)",
                 400, "tokenizer_unavailable");
}

// Ids of `text` by the model's tokenizer, each checked against the model's vocabulary.
std::optional<ApiError> encodeText(const std::string& text, const std::string& field, const ModelInfo& model,
                                   bool add_special_tokens, std::vector<std::int32_t>& out) {
  if (!model.text) return noTokenizer(field, model);
  std::vector<std::int32_t> ids;
  try {
    ids = model.text->tokenizer.encode(text, add_special_tokens);
  } catch (const std::exception& e) {
    return invalid(field, field + ": " + e.what());
  }
  if (ids.empty()) return invalid(field, field + ": the text gives no tokens");
  for (std::int32_t id : ids) {
    if (id < 0 || id >= model.vocab) {
      return invalid(field, field + ": the tokenizer gave id " + std::to_string(id) + ", outside the vocabulary of model '" +
                                model.name + "' (0.." + std::to_string(model.vocab - 1) + ")");
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  return std::nullopt;
}

// Token ids from a JSON array, or a text by the model's tokenizer; the error names `field`.
std::optional<ApiError> readTokenIds(const json& v, const std::string& field, const ModelInfo& model,
                                     std::vector<std::int32_t>& out) {
  if (v.is_string()) return encodeText(v.get<std::string>(), field, model, true, out);
  if (!v.is_array()) return invalid(field, field + ": expected a list of token ids, got " + typeName(v));
  if (v.empty()) return invalid(field, field + ": the list of token ids is empty");
  for (std::size_t i = 0; i < v.size(); ++i) {
    const json& t = v[i];
    const std::string at = field + "[" + std::to_string(i) + "]";
    if (t.is_array() || t.is_string()) {
      return invalid(field, at + ": expected a token id (integer); batched prompts are not supported");
    }
    if (!t.is_number_integer()) return invalid(field, at + ": expected a token id (integer), got " + typeName(t));
    const std::int64_t id = t.get<std::int64_t>();
    if (id < 0 || id >= model.vocab) {
      return invalid(field, at + ": token id " + std::to_string(id) + " is outside the vocabulary of model '" +
                                model.name + "' (0.." + std::to_string(model.vocab - 1) + ")");
    }
    out.push_back(static_cast<std::int32_t>(id));
  }
  return std::nullopt;
}

bool isNumber(const json& v) { return v.is_number(); }

}  // namespace

std::string errorBody(const ApiError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}};
  return json{{"error", e}}.dump();
}

ParsedCompletion parseCompletion(const std::string& body, bool chat, const std::vector<ModelInfo>& models) {
  ParsedCompletion out;
  json doc;
  try {
    doc = json::parse(body);
  } catch (const json::parse_error& e) {
    out.error = invalid("", std::string("the body is not valid JSON: ") + e.what());
    return out;
  }
  if (!doc.is_object()) {
    out.error = invalid("", std::string("the body must be a JSON object, got ") + typeName(doc));
    return out;
  }
  // Fields a client may send. Sampling fields are read and checked; the placeholder execution
  // ignores them (docs/serving.md).
  static const std::set<std::string> completion_fields = {
      "model", "prompt", "max_tokens", "stream", "stream_options", "temperature", "top_p", "top_k", "seed", "stop",
      "stop_token_ids", "ignore_eos", "n", "user"};
  static const std::set<std::string> chat_fields = {
      "model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "temperature", "top_p",
      "top_k", "seed", "stop", "stop_token_ids", "ignore_eos", "n", "user"};
  const auto& known = chat ? chat_fields : completion_fields;
  for (const auto& [key, value] : doc.items()) {
    (void)value;
    if (known.count(key) == 0) {
      out.error = invalid(key, "unknown field '" + key + "'", 400, "unknown_field");
      return out;
    }
  }
  CompletionRequest r;
  r.chat = chat;
  if (!doc.contains("model")) {
    out.error = invalid("model", "model: required");
    return out;
  }
  if (!doc["model"].is_string()) {
    out.error = invalid("model", std::string("model: expected a string, got ") + typeName(doc["model"]));
    return out;
  }
  const std::string name = doc["model"].get<std::string>();
  const ModelInfo* model = nullptr;
  for (std::size_t m = 0; m < models.size(); ++m) {
    if (models[m].name == name) {
      model = &models[m];
      r.model = static_cast<ModelId>(m);
    }
  }
  if (model == nullptr) {
    out.error = invalid("model", "model: '" + name + "' is not served here (GET /v1/models lists them)", 404,
                        "model_not_found");
    return out;
  }
  if (chat) {
    if (!doc.contains("messages")) {
      out.error = invalid("messages", "messages: required");
      return out;
    }
    const json& msgs = doc["messages"];
    bool chat_text = false;
    std::vector<text::ChatMessage> conversation;
    if (!msgs.is_array() || msgs.empty()) {
      out.error = invalid("messages", "messages: expected a non-empty list of messages");
      return out;
    }
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      const std::string at = "messages[" + std::to_string(i) + "]";
      const json& msg = msgs[i];
      if (!msg.is_object()) {
        out.error = invalid(at, at + ": expected an object with role and content");
        return out;
      }
      for (const auto& [key, value] : msg.items()) {
        (void)value;
        if (key != "role" && key != "content" && key != "name") {
          out.error = invalid(at + "." + key, at + ": unknown field '" + key + "'", 400, "unknown_field");
          return out;
        }
      }
      if (!msg.contains("role") || !msg["role"].is_string()) {
        out.error = invalid(at + ".role", at + ".role: expected a string (system, user, assistant)");
        return out;
      }
      const std::string role = msg["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "developer") {
        out.error = invalid(at + ".role", at + ".role: '" + role + "' is not system, developer, user or assistant");
        return out;
      }
      if (!msg.contains("content")) {
        out.error = invalid(at + ".content", at + ".content: required");
        return out;
      }
      // Content: text (a string, or a list of {"type": "text", "text": ...} parts) rendered with
      // the chat template, or token ids (a list of integers) concatenated as given.
      const json& content = msg["content"];
      std::optional<std::string> text;
      if (content.is_string()) {
        text = content.get<std::string>();
      } else if (content.is_array() && !content.empty() && content[0].is_object()) {
        std::string joined;
        for (std::size_t k = 0; k < content.size(); ++k) {
          const json& part = content[k];
          const std::string pat = at + ".content[" + std::to_string(k) + "]";
          if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
              !part["text"].is_string()) {
            out.error = invalid(pat, pat + ": expected {\"type\": \"text\", \"text\": STRING} (only text parts are supported)");
            return out;
          }
          joined += part["text"].get<std::string>();
        }
        text = joined;
      }
      const bool as_text = text.has_value();
      if (i == 0) chat_text = as_text;
      if (as_text != chat_text) {
        out.error = invalid(at + ".content", at + ".content: every message must be text, or every message token ids; not both");
        return out;
      }
      if (as_text) {
        if (!model->text) {
          out.error = noTokenizer(at + ".content", *model);
          return out;
        }
        conversation.push_back({role, *text});
      } else if (auto e = readTokenIds(content, at + ".content", *model, r.prompt)) {
        out.error = *e;
        return out;
      }
    }
    if (chat_text) {
      std::string rendered;
      try {
        rendered = text::renderChat(model->text->chat_template, conversation, model->text->special);
      } catch (const std::exception& e) {
        out.error = invalid("messages", std::string("messages: the chat template refused them: ") + e.what(), 400,
                            "chat_template_error");
        return out;
      }
      // A model's own template writes its special tokens (BOS) itself; the plain one does not.
      if (auto e = encodeText(rendered, "messages", *model, !model->text->chat_template.has_value(), r.prompt)) {
        out.error = *e;
        return out;
      }
    }
  } else {
    if (!doc.contains("prompt")) {
      out.error = invalid("prompt", "prompt: required");
      return out;
    }
    if (auto e = readTokenIds(doc["prompt"], "prompt", *model, r.prompt)) {
      out.error = *e;
      return out;
    }
  }
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    if (!doc.contains(field) || doc[field].is_null()) continue;
    const json& v = doc[field];
    if (!v.is_number_integer()) {
      out.error = invalid(field, std::string(field) + ": expected an integer, got " + typeName(v));
      return out;
    }
    const std::int64_t n = v.get<std::int64_t>();
    if (n < 1 || n > std::numeric_limits<std::int32_t>::max()) {
      out.error = invalid(field, std::string(field) + ": must be at least 1, got " + std::to_string(n));
      return out;
    }
    r.max_tokens = static_cast<int>(n);
  }
  if (model->max_positions > 0 &&
      static_cast<std::int64_t>(r.prompt.size()) + r.max_tokens > model->max_positions) {
    out.error = invalid(chat ? "messages" : "prompt",
                        std::string(chat ? "messages" : "prompt") + ": " + std::to_string(r.prompt.size()) +
                            " prompt tokens + max_tokens " + std::to_string(r.max_tokens) +
                            " exceed the context of model '" + model->name + "' (" +
                            std::to_string(model->max_positions) + " positions)",
                        400, "context_length_exceeded");
    return out;
  }
  if (doc.contains("stream") && !doc["stream"].is_null()) {
    if (!doc["stream"].is_boolean()) {
      out.error = invalid("stream", std::string("stream: expected a boolean, got ") + typeName(doc["stream"]));
      return out;
    }
    r.stream = doc["stream"].get<bool>();
  }
  if (doc.contains("stream_options") && !doc["stream_options"].is_null()) {
    const json& so = doc["stream_options"];
    if (!so.is_object()) {
      out.error = invalid("stream_options", "stream_options: expected an object");
      return out;
    }
    for (const auto& [key, value] : so.items()) {
      if (key != "include_usage") {
        out.error = invalid("stream_options." + key, "stream_options: unknown field '" + key + "'", 400, "unknown_field");
        return out;
      }
      if (!value.is_boolean()) {
        out.error = invalid("stream_options.include_usage", "stream_options.include_usage: expected a boolean");
        return out;
      }
      r.include_usage = value.get<bool>();
    }
  }
  for (const char* field : {"temperature", "top_p"}) {
    if (doc.contains(field) && !doc[field].is_null() && !isNumber(doc[field])) {
      out.error = invalid(field, std::string(field) + ": expected a number, got " + typeName(doc[field]));
      return out;
    }
  }
  if (doc.contains("temperature") && doc["temperature"].is_number() &&
      (doc["temperature"].get<double>() < 0 || doc["temperature"].get<double>() > 2)) {
    out.error = invalid("temperature", "temperature: must be between 0 and 2");
    return out;
  }
  if (doc.contains("top_p") && doc["top_p"].is_number() &&
      (doc["top_p"].get<double>() <= 0 || doc["top_p"].get<double>() > 1)) {
    out.error = invalid("top_p", "top_p: must be in (0, 1]");
    return out;
  }
  if (doc.contains("temperature") && doc["temperature"].is_number()) r.temperature = doc["temperature"].get<float>();
  if (doc.contains("top_p") && doc["top_p"].is_number()) r.top_p = doc["top_p"].get<float>();
  if (doc.contains("top_k") && !doc["top_k"].is_null()) {
    const json& v = doc["top_k"];
    if (!v.is_number_integer() || v.get<std::int64_t>() < -1 || v.get<std::int64_t>() > model->vocab) {
      out.error = invalid("top_k", "top_k: expected an integer from -1 (no limit) to the vocabulary size");
      return out;
    }
    r.top_k = std::max(0, static_cast<int>(v.get<std::int64_t>()));
  }
  if (doc.contains("stop_token_ids") && !doc["stop_token_ids"].is_null()) {
    const json& v = doc["stop_token_ids"];
    if (!v.is_array()) {
      out.error = invalid("stop_token_ids", std::string("stop_token_ids: expected a list of token ids, got ") + typeName(v));
      return out;
    }
    if (!v.empty()) {
      if (auto e = readTokenIds(v, "stop_token_ids", *model, r.stop_token_ids)) {
        out.error = *e;
        return out;
      }
    }
  }
  if (doc.contains("ignore_eos") && !doc["ignore_eos"].is_null()) {
    if (!doc["ignore_eos"].is_boolean()) {
      out.error = invalid("ignore_eos", std::string("ignore_eos: expected a boolean, got ") + typeName(doc["ignore_eos"]));
      return out;
    }
    r.ignore_eos = doc["ignore_eos"].get<bool>();
  }
  if (doc.contains("seed") && !doc["seed"].is_null()) {
    if (!doc["seed"].is_number_integer()) {
      out.error = invalid("seed", std::string("seed: expected an integer, got ") + typeName(doc["seed"]));
      return out;
    }
    r.seed = static_cast<std::uint64_t>(doc["seed"].get<std::int64_t>());
  }
  if (doc.contains("stop") && !doc["stop"].is_null()) {
    const json& v = doc["stop"];
    if (!v.is_string() && !v.is_array()) {
      out.error = invalid("stop", std::string("stop: expected a string or a list of strings, got ") + typeName(v));
      return out;
    }
    const json list = v.is_string() ? json::array({v}) : v;
    if (list.size() > 4) {
      out.error = invalid("stop", "stop: at most 4 stop strings");
      return out;
    }
    for (std::size_t k = 0; k < list.size(); ++k) {
      const std::string at = "stop[" + std::to_string(k) + "]";
      if (!list[k].is_string() || list[k].get<std::string>().empty()) {
        out.error = invalid("stop", at + ": expected a non-empty string");
        return out;
      }
      r.stop.push_back(list[k].get<std::string>());
    }
    if (!r.stop.empty() && !model->text) {
      out.error = noTokenizer("stop", *model);
      return out;
    }
  }
  if (doc.contains("n") && !doc["n"].is_null()) {
    if (!doc["n"].is_number_integer() || doc["n"].get<std::int64_t>() != 1) {
      out.error = invalid("n", "n: only 1 choice per request is supported");
      return out;
    }
  }
  if (doc.contains("user") && !doc["user"].is_string()) {
    out.error = invalid("user", "user: expected a string");
    return out;
  }
  out.request = std::move(r);
  return out;
}

std::vector<std::int32_t> placeholderTokens(const CompletionRequest& request, int count, int vocab) {
  std::uint64_t h = splitmix64(request.seed);
  for (std::int32_t t : request.prompt) h = splitmix64(h ^ static_cast<std::uint64_t>(t));
  std::vector<std::int32_t> out;
  out.reserve(static_cast<std::size_t>(count));
  for (int k = 0; k < count; ++k) {
    h = splitmix64(h + static_cast<std::uint64_t>(k));
    out.push_back(static_cast<std::int32_t>(h % static_cast<std::uint64_t>(std::max(1, vocab))));
  }
  return out;
}

namespace {
json usageJson(const CompletionRequest& request, int completion_tokens) {
  const int prompt = static_cast<int>(request.prompt.size());
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt + completion_tokens}};
}
}  // namespace

// Outputs carry token ids (vLLM's `token_ids`) and, where the model has a tokenizer, their text.
json completionResponse(const CompletionRequest& request, const std::string& id, const std::string& model,
                        std::int64_t created, const std::vector<std::int32_t>& tokens, const std::string& finish_reason,
                        const std::string& text) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
  if (request.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}, {"token_ids", tokens}};
  } else {
    choice["text"] = text;
    choice["token_ids"] = tokens;
  }
  return {{"id", id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})},
          {"usage", usageJson(request, static_cast<int>(tokens.size()))}};
}

json completionChunk(const CompletionRequest& request, const std::string& id, const std::string& model,
                     std::int64_t created, const std::vector<std::int32_t>& tokens, bool finish,
                     const std::string& finish_reason, const std::string& text) {
  json choice = {{"index", 0}, {"finish_reason", finish ? json(finish_reason) : json(nullptr)}, {"logprobs", nullptr}};
  if (request.chat) {
    choice["delta"] = {{"content", text}, {"token_ids", tokens}};
  } else {
    choice["text"] = text;
    choice["token_ids"] = tokens;
  }
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json usageChunk(const CompletionRequest& request, const std::string& id, const std::string& model, std::int64_t created,
                int completion_tokens) {
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usageJson(request, completion_tokens)}};
}

std::shared_ptr<const TextModel> loadTextModel(const std::string& folder) {
  auto model = std::make_shared<TextModel>(TextModel{text::loadTokenizerFolder(folder), std::nullopt, {}, folder});
  try {
    if (auto source = text::findChatTemplate(folder)) model->chat_template = text::ChatTemplate::parse(*source);
    model->special = text::findSpecialTokens(folder);
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(folder + ": chat template: " + e.what());
  }
  return model;
}

OutputText::OutputText(std::shared_ptr<const TextModel> text, std::vector<std::string> stop)
    : text_(std::move(text)), stop_(std::move(stop)) {
  if (text_) decoder_.emplace(text_->tokenizer);
}

std::string OutputText::push(std::int32_t id) {
  if (!text_ || stopped_) return "";
  pending_ += decoder_->push(id);
  std::size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that could still begin a stop string.
  std::size_t hold = 0;
  for (const auto& s : stop_) {
    for (std::size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string OutputText::finish() {
  if (!text_ || stopped_) return "";
  pending_ += decoder_->finish();
  std::size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    pending_.resize(cut);
  }
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace computron::server
