// The tokenizer against Hugging Face `tokenizers` itself: tests/data/tokenizers/ holds small
// tokenizer.json files of each family and the ids and text `tokenizers` gives for a fixed list of
// strings (made by scripts/make_tokenizer_fixtures.py). Skipped while that folder is absent.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "common/json_reader.h"
#include "common/text/tokenizer.h"

namespace computron::text {
namespace {

using Ids = std::vector<std::int32_t>;

const std::filesystem::path kFixtures = std::filesystem::path(COMPUTRON_SOURCE_DIR) / "tests/data/tokenizers";

Ids idsOf(const nlohmann::json& j) { return j.get<Ids>(); }

std::string show(const Ids& ids) {
  std::ostringstream out;
  for (std::size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
  return out.str();
}

TEST(TokenizerGolden, MatchesHuggingFaceTokenizers) {
  const std::filesystem::path goldens_path = kFixtures / "goldens.json";
  if (!std::filesystem::exists(goldens_path)) {
    GTEST_SKIP() << kFixtures.string() << " is absent: run scripts/make_tokenizer_fixtures.py "
                 << "tests/data/tokenizers where the `tokenizers` package is installed";
  }
  const nlohmann::json goldens = readJsonFile(goldens_path.string());
  ASSERT_TRUE(goldens.contains("files"));
  int files = 0, cases = 0;
  for (const auto& [name, list] : goldens.at("files").items()) {
    SCOPED_TRACE(name);
    const Tokenizer t = Tokenizer::fromFile((kFixtures / name / "tokenizer.json").string());
    ++files;
    for (const nlohmann::json& c : list) {
      const std::string text = c.at("text").get<std::string>();
      SCOPED_TRACE("text: " + nlohmann::json(text).dump());
      const Ids ids = idsOf(c.at("ids"));
      EXPECT_EQ(show(t.encode(text, true, true)), show(ids));
      EXPECT_EQ(show(t.encode(text, false, true)), show(idsOf(c.at("ids_no_special"))));
      if (c.contains("ids_split_special")) {
        EXPECT_EQ(show(t.encode(text, true, false)), show(idsOf(c.at("ids_split_special"))));
      }
      const std::string decoded = c.at("decoded").get<std::string>();
      EXPECT_EQ(t.decode(ids, true), decoded);
      EXPECT_EQ(t.decode(ids, false), c.at("decoded_with_special").get<std::string>());
      StreamDecoder stream(t);
      std::string streamed;
      for (const std::int32_t id : ids) streamed += stream.push(id);
      streamed += stream.finish();
      EXPECT_EQ(streamed, decoded);
      ++cases;
    }
  }
  EXPECT_GE(files, 3);
  EXPECT_GT(cases, 0);
}

}  // namespace
}  // namespace computron::text
