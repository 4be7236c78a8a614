// Text in `computron serve`'s API: prompts tokenized with the model's tokenizer, chat messages
// rendered with its chat template (or the plain one) and then tokenized, output text decoded as
// tokens arrive and cut at stop strings; and the refusals when a model has no tokenizer. The
// tokenizers are the Hugging Face-made fixtures in tests/data/tokenizers (their ids are checked
// against Hugging Face's in tests/text); the templates are the real ones in tests/data/chat_templates.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "runtime/server/api.h"
#include "tests/support/cli_runner.h"

namespace computron::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string dataPath(const std::string& rel) { return std::string(COMPUTRON_SOURCE_DIR) + "/tests/data/" + rel; }

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A model folder: a fixture tokenizer.json, and a tokenizer_config.json with `chat_template` when given.
// Made under `scratch` (removed when the suite ends).
std::string modelFolder(const fs::path& scratch, const std::string& name, const std::string& tokenizer,
                        const std::string& chat_template, const std::string& bos, const std::string& eos) {
  const fs::path dir = scratch / name;
  fs::create_directories(dir);
  fs::copy_file(dataPath("tokenizers/" + tokenizer + "/tokenizer.json"), dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  json config = {{"bos_token", bos}, {"eos_token", eos}};
  if (!chat_template.empty()) config["chat_template"] = readFile(dataPath("chat_templates/" + chat_template + ".jinja"));
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
  return dir.string();
}

class ApiText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(dataPath("tokenizers/llama3-style/tokenizer.json"))) GTEST_SKIP() << "no tokenizer fixtures";
    scratch_ = std::make_unique<fakes::ScratchDir>();
    const fs::path& root = scratch_->path();
    llama3_ = loadTextModel(modelFolder(root, "llama3", "llama3-style", "llama3", "<|begin_of_text|>", "<|eot_id|>"));
    llama2_ = loadTextModel(modelFolder(root, "llama2", "llama2-style", "llama2", "<s>", "</s>"));
    plain_ = loadTextModel(modelFolder(root, "plain", "opt-style", "", "</s>", "</s>"));
  }
  std::vector<ModelInfo> models() const {
    return {ModelInfo{"llama3", 4000, 4096, llama3_}, ModelInfo{"llama2", 4000, 4096, llama2_},
            ModelInfo{"opt", 4000, 4096, plain_}, ModelInfo{"ids-only", 4000, 4096, nullptr}};
  }
  static void TearDownTestSuite() { scratch_.reset(); }
  static std::shared_ptr<const TextModel> llama3_, llama2_, plain_;
  static std::unique_ptr<fakes::ScratchDir> scratch_;
};
std::shared_ptr<const TextModel> ApiText::llama3_, ApiText::llama2_, ApiText::plain_;
std::unique_ptr<fakes::ScratchDir> ApiText::scratch_;

TEST_F(ApiText, ATextPromptIsTokenizedWithTheModelsTokenizer) {
  const std::string text = "Hello world, it's 2026!";
  ParsedCompletion p = parseCompletion(json{{"model", "llama3"}, {"prompt", text}}.dump(), false, models());
  ASSERT_TRUE(p.request) << p.error.message;
  EXPECT_EQ(p.request->prompt, llama3_->tokenizer.encode(text));
  EXPECT_EQ(p.request->prompt.front(), *llama3_->tokenizer.tokenId("<|begin_of_text|>"));
}

TEST_F(ApiText, ChatMessagesAreRenderedWithTheModelsTemplateThenTokenized) {
  const json messages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                     {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "Hi "}},
                                                                                 {{"type", "text"}, {"text", "there"}}})}}});
  ParsedCompletion p = parseCompletion(json{{"model", "llama3"}, {"messages", messages}}.dump(), true, models());
  ASSERT_TRUE(p.request) << p.error.message;
  const std::string rendered = text::renderChat(llama3_->chat_template, {{"system", "Be brief."}, {"user", "Hi there"}},
                                                llama3_->special);
  EXPECT_NE(rendered.find("<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"), std::string::npos) << rendered;
  EXPECT_NE(rendered.find("<|start_header_id|>assistant<|end_header_id|>\n\n"), std::string::npos) << rendered;
  // The template writes BOS itself: tokenized without adding another.
  EXPECT_EQ(p.request->prompt, llama3_->tokenizer.encode(rendered, false));
  const auto bos = *llama3_->tokenizer.tokenId("<|begin_of_text|>");
  EXPECT_EQ(p.request->prompt.front(), bos);
  EXPECT_NE(p.request->prompt[1], bos);
}

TEST_F(ApiText, AModelWithoutATemplateGetsThePlainOne) {
  const json messages = json::array({{{"role", "user"}, {"content", "What is 2+2?"}}});
  ParsedCompletion p = parseCompletion(json{{"model", "opt"}, {"messages", messages}}.dump(), true, models());
  ASSERT_TRUE(p.request) << p.error.message;
  EXPECT_EQ(p.request->prompt, plain_->tokenizer.encode("user: What is 2+2?\n\nassistant: ", true));
}

TEST_F(ApiText, TheTemplatesOwnRefusalIsA400) {
  // Llama 2's template raises when roles do not alternate user/assistant.
  const json messages = json::array({{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}});
  ParsedCompletion p = parseCompletion(json{{"model", "llama2"}, {"messages", messages}}.dump(), true, models());
  ASSERT_FALSE(p.request);
  EXPECT_EQ(p.error.status, 400);
  EXPECT_EQ(p.error.code, "chat_template_error");
  EXPECT_NE(p.error.message.find("alternate"), std::string::npos) << p.error.message;
}

TEST_F(ApiText, TextNeedsATokenizerAndMessagesMustNotMixTextAndIds) {
  for (const json& body :
       {json{{"model", "ids-only"}, {"prompt", "hello"}}, json{{"model", "ids-only"}, {"prompt", {1, 2}}, {"stop", "x"}}}) {
    ParsedCompletion p = parseCompletion(body.dump(), false, models());
    ASSERT_FALSE(p.request) << body.dump();
    EXPECT_EQ(p.error.code, "tokenizer_unavailable") << p.error.message;
  }
  ParsedCompletion chat = parseCompletion(
      json{{"model", "ids-only"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}}.dump(), true, models());
  ASSERT_FALSE(chat.request);
  EXPECT_EQ(chat.error.param, "messages[0].content");
  EXPECT_EQ(chat.error.code, "tokenizer_unavailable");
  ParsedCompletion mixed = parseCompletion(
      json{{"model", "llama3"},
           {"messages", json::array({{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", {5, 6}}}})}}
          .dump(),
      true, models());
  ASSERT_FALSE(mixed.request);
  EXPECT_EQ(mixed.error.param, "messages[1].content");
  ParsedCompletion stops = parseCompletion(
      json{{"model", "llama3"}, {"prompt", "x"}, {"stop", {"a", "b", "c", "d", "e"}}}.dump(), false, models());
  ASSERT_FALSE(stops.request);
  EXPECT_EQ(stops.error.param, "stop");
}

TEST_F(ApiText, OutputTextIsDecodedAsTokensArriveAndCutAtAStopString) {
  const std::string full = "The cat sat on the mat. Then it slept.";
  const std::vector<std::int32_t> ids = llama3_->tokenizer.encode(full, false);
  {
    OutputText out(llama3_, {});
    std::string got;
    for (auto id : ids) got += out.push(id);
    got += out.finish();
    EXPECT_EQ(got, full);
    EXPECT_FALSE(out.stopped());
  }
  {
    // The stop string spans token boundaries; nothing of it (or after it) is released.
    OutputText out(llama3_, {"mat. Th", "never"});
    std::string got;
    std::size_t used = 0;
    for (auto id : ids) {
      got += out.push(id);
      ++used;
      if (out.stopped()) break;
    }
    EXPECT_TRUE(out.stopped());
    EXPECT_EQ(got, "The cat sat on the ");
    EXPECT_LT(used, ids.size());
    EXPECT_EQ(out.finish(), "");
  }
  {
    OutputText none(nullptr, {});
    EXPECT_EQ(none.push(5), "");
    EXPECT_FALSE(none.enabled());
  }
}

}  // namespace
}  // namespace computron::server
