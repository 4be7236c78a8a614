// Chat templates: the Jinja2 strings in a Hugging Face model folder (`tokenizer_config.json`'s
// `chat_template`, or `chat_template.jinja`) that turn OpenAI-style messages into one prompt.
//
// A small interpreter of the Jinja2 subset that the chat templates of the served families use
// (Llama 2, Llama 3 / 3.1 / 3.2, Mistral v0.1-v0.3, Qwen2, ChatML), with the environment that
// transformers' `apply_chat_template` uses: `trim_blocks` and `lstrip_blocks` on, the loop
// controls `break`/`continue`, the globals `raise_exception`, `strftime_now`, `range`,
// `namespace`, and transformers' `tojson` (no key sorting, no HTML escaping, non-ASCII kept).
//
// Supported: `{{ }}`, `{% if/elif/else %}`, `{% for a[, b] in x [if cond] %}` with `loop.*` and
// `{% else %}`, `{% set %}` (names, tuples, `ns.attr`, and the `{% set x %}...{% endset %}`
// block), `{% break/continue %}`, `{% generation %}`, comments, whitespace control (`-`, `+`);
// literals, lists, dicts, arithmetic, `~`, comparisons, `and/or/not`, `in`, `is [not] TEST`,
// attributes, subscripts, slices, `a if c else b`, the filters and tests listed in
// chat_template.cpp (kFilters, kTests) and the str/dict methods templates call. Undefined names
// render as "" and are falsy; using one as a value in arithmetic, or taking its attribute, is an
// error, as in Jinja2. Anything else (macros, `{% raw %}`, `**`, ...) is refused when the
// template is parsed, naming its line and column.
//
// Rendering is bounded: a step budget (every expression and statement costs one) and an output
// size limit, which also caps every intermediate string and list, so a hostile template or
// request cannot hang the server or exhaust its memory.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace computron::text {

// Every failure of parsing or rendering. `kind` tells the server what to answer: a request that
// a template refuses (Raised: `raise_exception(...)`, e.g. roles out of order) is the client's
// error (400), as is one too large to render (Limit); Syntax and Render are the template's.
class ChatTemplateError : public std::runtime_error {
 public:
  enum class Kind { Syntax, Render, Raised, Limit };
  ChatTemplateError(Kind kind, const std::string& message, int line = 0, int column = 0);
  Kind kind() const { return kind_; }
  int line() const { return line_; }      // 1-based; 0 where no place applies
  int column() const { return column_; }  // 1-based, in characters

 private:
  Kind kind_;
  int line_;
  int column_;
};

struct ChatTemplateLimits {
  std::size_t max_steps = 2'000'000;         // expression and statement evaluations
  std::size_t max_output_bytes = 4u << 20;  // the output, and any one string or list built
};

struct RenderOptions {
  ChatTemplateLimits limits;
  // The local time `strftime_now` formats; unset: the machine's clock. Tests pin it.
  std::function<std::tm()> local_time;
};

class ChatTemplate {
 public:
  // Parses the whole template; throws ChatTemplateError (Syntax) naming the line and column of
  // the first thing it cannot read (unclosed tag or block, unknown filter, test or tag).
  static ChatTemplate parse(std::string source);

  // Renders with `context` as the template's variables (an object: `messages`, `bos_token`,
  // `eos_token`, `add_generation_prompt`, `tools`, ...). An ordered_json context keeps the
  // client's key order in `tojson` and `items()`, as Python does; nlohmann::json sorts keys.
  std::string render(const nlohmann::json& context, const RenderOptions& options = {}) const;
  std::string render(const nlohmann::ordered_json& context, const RenderOptions& options = {}) const;

  const std::string& source() const;

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ChatTemplate(const ChatTemplate&);
  ChatTemplate& operator=(const ChatTemplate&);
  ~ChatTemplate();

  struct Program;

 private:
  explicit ChatTemplate(std::shared_ptr<const Program> program);
  std::shared_ptr<const Program> program_;  // immutable once parsed: renders may share it
};

struct ChatMessage {
  std::string role;  // system, developer, user, assistant, tool, ...
  std::string content;
};

struct SpecialTokens {
  std::string bos_token;
  std::string eos_token;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;
  // More template variables (`tools`, `date_string`, ...): an object, or null for none.
  nlohmann::ordered_json extra_context;
  RenderOptions render;
};

// The template for a model folder without one: each message as "ROLE: CONTENT\n\n", then
// "assistant: " when a generation prompt is wanted. No special tokens (the tokenizer adds BOS).
extern const char* const kPlainChatTemplate;

// Renders `messages` with `chat_template`, or with kPlainChatTemplate when there is none.
std::string renderChat(const std::optional<ChatTemplate>& chat_template, const std::vector<ChatMessage>& messages,
                       const SpecialTokens& tokens, const ChatRenderOptions& options = {});

// The chat template of a Hugging Face model folder: `chat_template.jinja` if present, else
// `tokenizer_config.json`'s `chat_template` (a string, or a list of {name, template} from which
// "default" is taken). nullopt when the folder has none; throws std::runtime_error when a file
// exists but cannot be read or parsed as JSON.
std::optional<std::string> findChatTemplate(const std::string& model_folder);

// `bos_token` and `eos_token` of the folder's `tokenizer_config.json` (a string or an
// AddedToken object with `content`); empty where absent.
SpecialTokens findSpecialTokens(const std::string& model_folder);

}  // namespace computron::text
