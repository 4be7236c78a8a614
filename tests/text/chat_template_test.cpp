// Chat templates: the real templates of the served families against what Jinja2 renders
// (tests/data/chat_templates/goldens.json, written by scripts/make_chat_template_fixtures.py),
// byte for byte; malformed templates named by line and column; the step and size limits; the
// plain fallback and reading a model folder.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "common/text/chat_template.h"

namespace computron::text {
namespace {

const std::string kDataDir = std::string(COMPUTRON_SOURCE_DIR) + "/tests/data/chat_templates/";

std::string readText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The date the fixtures pin strftime_now to: 2024-09-05 14:03:09.
RenderOptions fixedDate() {
  RenderOptions options;
  options.local_time = [] {
    std::tm tm{};
    tm.tm_year = 2024 - 1900;
    tm.tm_mon = 8;
    tm.tm_mday = 5;
    tm.tm_hour = 14;
    tm.tm_min = 3;
    tm.tm_sec = 9;
    tm.tm_wday = 4;
    tm.tm_yday = 248;
    return tm;
  };
  return options;
}

std::string render(const std::string& source, const nlohmann::ordered_json& context = nlohmann::ordered_json::object()) {
  return ChatTemplate::parse(source).render(context, fixedDate());
}

// The error a template gives when parsed (or, if it parses, when rendered with `context`).
ChatTemplateError errorOf(const std::string& source, const nlohmann::ordered_json& context = nlohmann::ordered_json::object(),
                          const RenderOptions& options = fixedDate()) {
  try {
    ChatTemplate::parse(source).render(context, options);
  } catch (const ChatTemplateError& error) {
    return error;
  }
  ADD_FAILURE() << "no error from: " << source;
  return ChatTemplateError(ChatTemplateError::Kind::Render, "none");
}

TEST(ChatTemplateGoldens, EveryCaseRendersAsJinja2Does) {
  const auto goldens = nlohmann::ordered_json::parse(readText(kDataDir + "goldens.json"));
  std::map<std::string, ChatTemplate> templates;
  int checked = 0;
  int raised = 0;
  for (const auto& c : goldens["cases"]) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    std::optional<ChatTemplate> parsed;
    try {
      if (c.contains("template")) {
        const std::string file = c["template"].get<std::string>();
        if (!templates.count(file)) templates.emplace(file, ChatTemplate::parse(readText(kDataDir + file + ".jinja")));
        parsed = templates.at(file);
      } else {
        parsed = ChatTemplate::parse(c["source"].get<std::string>());
      }
    } catch (const ChatTemplateError& error) {
      ADD_FAILURE() << "parse: " << error.what();
      continue;
    }
    if (c.contains("expected")) {
      try {
        EXPECT_EQ(parsed->render(c["context"], fixedDate()), c["expected"].get<std::string>());
      } catch (const ChatTemplateError& error) {
        ADD_FAILURE() << "render: " << error.what();
      }
    } else {
      try {
        const std::string out = parsed->render(c["context"], fixedDate());
        ADD_FAILURE() << "expected raise_exception(" << c["raises"] << "), rendered: " << out;
      } catch (const ChatTemplateError& error) {
        EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Raised) << error.what();
        EXPECT_NE(std::string(error.what()).find(c["raises"].get<std::string>()), std::string::npos) << error.what();
        ++raised;
      }
    }
    ++checked;
  }
  EXPECT_GE(checked, 200);
  EXPECT_GE(raised, 20);  // bad role orders in Llama 2 and Mistral, system roles Mistral refuses, ...
}

TEST(ChatTemplateGoldens, EveryServedFamilyHasItsTemplate) {
  for (const char* name : {"llama2", "llama3", "llama3_1", "llama3_2", "mistral_v0_1", "mistral_v0_2", "mistral_v0_3",
                           "qwen2", "chatml"}) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(ChatTemplate::parse(readText(kDataDir + name + ".jinja")));
  }
}

TEST(ChatTemplateGoldens, Llama2RefusesRolesOutOfOrderAsARaise) {
  const auto llama2 = ChatTemplate::parse(readText(kDataDir + "llama2.jinja"));
  nlohmann::json context = {{"bos_token", "<s>"}, {"eos_token", "</s>"},
                            {"messages", {{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}}}};
  try {
    llama2.render(context);
    FAIL() << "rendered";
  } catch (const ChatTemplateError& error) {
    EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Raised);
    EXPECT_NE(std::string(error.what()).find("Conversation roles must alternate user/assistant/user/assistant/..."),
              std::string::npos)
        << error.what();
    EXPECT_EQ(error.line(), 1);
  }
}

// --- the subset, piece by piece (more cases run against Jinja2 in the goldens)

TEST(ChatTemplateSubset, UndefinedIsEmptyAndFalsy) {
  EXPECT_EQ(render("[{{ nothing }}]{% if nothing %}x{% else %}y{% endif %}{{ nothing is defined }}"), "[]yFalse");
  EXPECT_EQ(render("{% for x in nothing %}x{% endfor %}{{ nothing | length }}{{ nothing | default('d') }}"), "0d");
}

TEST(ChatTemplateSubset, SetInsideALoopDoesNotLeakButANamespaceDoes) {
  EXPECT_EQ(render("{% set n = 0 %}{% for x in [1, 2, 3] %}{% set n = n + x %}{% endfor %}{{ n }}"), "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}"),
            "6");
}

TEST(ChatTemplateSubset, MessagesReadByKeyOrAttribute) {
  const nlohmann::ordered_json context = {{"messages", {{{"role", "user"}, {"content", " hi "}}}}};
  EXPECT_EQ(render("{{ messages[0]['role'] }}{{ messages[0].role }}[{{ messages[0].content | trim }}]", context), "useruser[hi]");
  EXPECT_EQ(render("{{ messages[1:] | length }}{{ messages[-1].content.strip() }}", context), "0hi");
}

TEST(ChatTemplateSubset, ToJsonKeepsTheOrderOfAnOrderedContext) {
  const auto ordered = nlohmann::ordered_json::parse(R"({"t": {"zeta": 1, "alpha": [true, null, "\u00e9"]}})");
  EXPECT_EQ(render("{{ t | tojson }}", ordered), R"({"zeta": 1, "alpha": [true, null, "é"]})");
  const auto sorted = nlohmann::json::parse(R"({"t": {"zeta": 1, "alpha": 2}})");
  EXPECT_EQ(ChatTemplate::parse("{{ t | tojson }}").render(sorted), R"({"alpha": 2, "zeta": 1})");
}

TEST(ChatTemplateSubset, StrftimeNowUsesTheInjectedClock) {
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}"), "05 Sep 2024");
  // Without one, today's date (just check the shape).
  const std::string today = ChatTemplate::parse("{{ strftime_now('%Y-%m-%d') }}").render(nlohmann::json::object());
  EXPECT_EQ(today.size(), 10u);
}

TEST(ChatTemplateSubset, RaiseExceptionIsItsOwnKind) {
  const auto error = errorOf("{% if messages | length == 0 %}{{ raise_exception('No messages!') }}{% endif %}");
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Raised);
  EXPECT_STREQ(error.what(), "chat template line 1, column 35: No messages!");
}

TEST(ChatTemplateSubset, TypeErrorsNameTheirPlace) {
  auto error = errorOf("line one\n{{ 'a' + 1 }}");
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Render);
  EXPECT_EQ(error.line(), 2);
  EXPECT_NE(std::string(error.what()).find("unsupported operand type(s) for +: 'str' and 'int'"), std::string::npos);
  error = errorOf("{{ nothing.attr }}");
  EXPECT_NE(std::string(error.what()).find("'nothing' is undefined"), std::string::npos) << error.what();
  error = errorOf("{{ nothing + 'x' }}");
  EXPECT_NE(std::string(error.what()).find("'nothing' is undefined"), std::string::npos) << error.what();
  error = errorOf("{% set x = 1 %}{% set x.a = 2 %}");
  EXPECT_NE(std::string(error.what()).find("non-namespace"), std::string::npos) << error.what();
  error = errorOf("{{ 1 // 0 }}");
  EXPECT_NE(std::string(error.what()).find("by zero"), std::string::npos) << error.what();
}

// --- malformed templates: the first problem, by line and column

struct Malformed {
  const char* source;
  int line;
  int column;
  const char* message;
};

TEST(ChatTemplateSyntax, MalformedTemplatesNameLineAndColumn) {
  const Malformed cases[] = {
      {"hello {{ name", 1, 7, "unclosed tag: '{{' has no '}}'"},
      {"a\n  {% if x %}b", 2, 3, "'if' is never closed (expected 'elif', 'else' or 'endif')"},
      {"a\n{% for m in messages %}\n{{ m }}\n", 2, 1, "'for' is never closed (expected 'else' or 'endfor')"},
      {"{# never closed", 1, 1, "unclosed comment"},
      {"x\n\n   {{ name | frobnicate }}", 3, 14, "unknown filter 'frobnicate'"},
      {"{{ x is frobnicated }}", 1, 9, "unknown test 'frobnicated'"},
      {"{% macro m() %}{% endmacro %}", 1, 4, "unknown or unsupported tag 'macro'"},
      {"{% endif %}", 1, 4, "unexpected 'endif'"},
      {"{{ 'abc }}", 1, 4, "unterminated string literal"},
      {"{{ (1 + 2 }}", 1, 11, "unexpected '}', expected ')'"},
      {"{{ 1 + }}", 1, 8, "unexpected end of print statement"},
      {"{{ a ] }}", 1, 6, "unexpected ']'"},
      {"{% if x %}{% break %}{% endif %}", 1, 14, "'break' outside a for loop"},
      {"{{ 2 ** 3 }}", 1, 6, "'**' is not supported"},
      {"{{ a $ b }}", 1, 6, "unexpected character '$'"},
      {"\u00e9\u00e9 {{ x | nope }}", 1, 11, "unknown filter 'nope'"},  // columns count characters
      {"{% set %}", 1, 8, "expected a name"},
      {"{{ xs.99999999999999999999 }}", 1, 7, "integer literal out of range"},
      {"{% for in x %}{% endfor %}", 1, 11, "expected 'in' in the for loop, got 'x'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.source);
    try {
      ChatTemplate::parse(c.source);
      ADD_FAILURE() << "parsed";
    } catch (const ChatTemplateError& error) {
      EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Syntax);
      EXPECT_EQ(error.line(), c.line) << error.what();
      EXPECT_EQ(error.column(), c.column) << error.what();
      EXPECT_NE(std::string(error.what()).find(c.message), std::string::npos) << error.what();
      EXPECT_EQ(std::string(error.what()).rfind("chat template line " + std::to_string(c.line) + ", column " +
                                                    std::to_string(c.column) + ": ",
                                                0),
                0u)
          << error.what();
    }
  }
}

TEST(ChatTemplateSyntax, DeepNestingIsRefusedNotACrash) {
  EXPECT_EQ(errorOf("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").kind(),
            ChatTemplateError::Kind::Syntax);
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_EQ(errorOf(ifs).kind(), ChatTemplateError::Kind::Syntax);
  EXPECT_EQ(errorOf("{{ " + std::string(5000, '-') + "1 }}").kind(), ChatTemplateError::Kind::Syntax);
  EXPECT_EQ(errorOf("{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}").kind(), ChatTemplateError::Kind::Syntax);
}

// --- limits

TEST(ChatTemplateLimits, ALoopThatNeverEndsRunsOutOfSteps) {
  RenderOptions options = fixedDate();
  options.limits.max_steps = 100'000;
  const auto error = errorOf(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}"
      "{% endfor %}{% endfor %}",
      nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit);
  EXPECT_NE(std::string(error.what()).find("more than 100000 steps"), std::string::npos) << error.what();
}

TEST(ChatTemplateLimits, OutputAndIntermediateStringsAreCapped) {
  RenderOptions options = fixedDate();
  options.limits.max_output_bytes = 1000;
  auto error = errorOf("{% for i in range(100) %}0123456789abcdef{% endfor %}", nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit);
  EXPECT_NE(std::string(error.what()).find("over the limit of 1000 bytes"), std::string::npos) << error.what();
  // Doubling a string in a namespace never reaches the output, and is still stopped.
  error = errorOf("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                  nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit) << error.what();
  error = errorOf("{{ 'x' * 1000000000000 }}", nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit) << error.what();
  error = errorOf("{{ range(1000000000000) | length }}", nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit) << error.what();
  error = errorOf("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
                  nlohmann::ordered_json::object(), options);
  EXPECT_EQ(error.kind(), ChatTemplateError::Kind::Limit) << error.what();
  // Within the limits, the same templates render.
  EXPECT_EQ(ChatTemplate::parse("{% for i in range(10) %}0123456789{% endfor %}").render(nlohmann::json::object(), options).size(),
            100u);
}

TEST(ChatTemplateLimits, ALongConversationFitsTheDefaults) {
  const auto llama = ChatTemplate::parse(readText(kDataDir + "llama3_1.jinja"));
  nlohmann::ordered_json context = {{"bos_token", "<|begin_of_text|>"}, {"add_generation_prompt", true}};
  context["messages"] = nlohmann::ordered_json::array();
  for (int i = 0; i < 2000; ++i)
    context["messages"].push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", std::string(500, 'a' + i % 26)}});
  EXPECT_GT(llama.render(context, fixedDate()).size(), 1'000'000u);
}

// --- the chat helper and model folders

TEST(RenderChat, PlainTemplateWithoutAModelTemplate) {
  const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
  EXPECT_EQ(renderChat(std::nullopt, messages, {}), "system: Be brief.\n\nuser: Hi\n\nassistant: ");
  ChatRenderOptions options;
  options.add_generation_prompt = false;
  EXPECT_EQ(renderChat(std::nullopt, messages, {}, options), "system: Be brief.\n\nuser: Hi\n\n");
}

TEST(RenderChat, ModelTemplateGetsTokensAndExtraContext) {
  const auto llama = ChatTemplate::parse(readText(kDataDir + "llama3_1.jinja"));
  ChatRenderOptions options;
  options.extra_context = {{"date_string", "01 Jan 2025"}};
  const std::string out = renderChat(llama, {{"user", "Hi"}}, {"<|begin_of_text|>", "<|eot_id|>"}, options);
  EXPECT_EQ(out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 01 Jan 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

class ModelFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("chat_template_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::filesystem::path dir_;
};

TEST_F(ModelFolder, NoTemplate) {
  EXPECT_EQ(findChatTemplate(dir_.string()), std::nullopt);
  write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_EQ(findChatTemplate(dir_.string()), std::nullopt);
  EXPECT_EQ(findSpecialTokens(dir_.string()).bos_token, "<s>");
  EXPECT_EQ(findSpecialTokens(dir_.string()).eos_token, "");
}

TEST_F(ModelFolder, TemplateStringInTokenizerConfig) {
  write("tokenizer_config.json",
        R"({"chat_template": "{{ bos_token }}{{ messages[0]['content'] }}", "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>"})");
  EXPECT_EQ(findChatTemplate(dir_.string()), "{{ bos_token }}{{ messages[0]['content'] }}");
  const SpecialTokens tokens = findSpecialTokens(dir_.string());
  EXPECT_EQ(tokens.bos_token, "<s>");
  EXPECT_EQ(tokens.eos_token, "</s>");
  const auto t = ChatTemplate::parse(*findChatTemplate(dir_.string()));
  EXPECT_EQ(renderChat(t, {{"user", "hey"}}, tokens), "<s>hey");
}

TEST_F(ModelFolder, NamedTemplatesTakeDefault) {
  write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  EXPECT_EQ(findChatTemplate(dir_.string()), "D");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "R"}]})");
  EXPECT_EQ(findChatTemplate(dir_.string()), std::nullopt);
}

TEST_F(ModelFolder, JinjaFileWinsOverTokenizerConfig) {
  write("tokenizer_config.json", R"({"chat_template": "old"})");
  write("chat_template.jinja", "new {{ x }}\n");
  EXPECT_EQ(findChatTemplate(dir_.string()), "new {{ x }}\n");
}

TEST_F(ModelFolder, BrokenTokenizerConfigIsAnError) {
  write("tokenizer_config.json", "{not json");
  EXPECT_THROW(findChatTemplate(dir_.string()), std::runtime_error);
}

}  // namespace
}  // namespace computron::text
