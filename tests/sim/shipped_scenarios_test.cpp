// Every scenario shipped in scenarios/ (and its subfolders) validates and runs end to end through `computron sim`, with
// its output files written, and the files agree with each other: summary.json counts every
// request that requests.csv lists, and each model's count adds up to the total.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/cli_runner.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

// Paths under scenarios/, its subfolders included (fidelity/, fidelity-1gpu/), except profiles/
// (profiles, not scenarios).
std::vector<std::string> shippedScenarios() {
  const fs::path root = fs::path(COMPUTRON_SOURCE_DIR) / "scenarios";
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    const fs::path relative = entry.path().lexically_relative(root);
    if (entry.path().extension() == ".json" && *relative.begin() != "profiles") names.push_back(relative.string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

class ShippedScenario : public ::testing::TestWithParam<std::string> {};

TEST_P(ShippedScenario, ValidatesRunsAndWritesConsistentOutputs) {
  const fs::path scenario = fs::path(COMPUTRON_SOURCE_DIR) / "scenarios" / GetParam();
  fakes::ScratchDir out;
  const fakes::CommandResult r =
      fakes::runBinary(COMPUTRON_BINARY, "sim " + scenario.string() + " --out " + out.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const fs::path dir = out.path();
  ASSERT_TRUE(fs::exists(dir / "summary.json"));
  ASSERT_TRUE(fs::exists(dir / "requests.csv"));
  ASSERT_TRUE(fs::exists(dir / "timeline.json"));

  const nlohmann::json summary = nlohmann::json::parse(fakes::readWholeFile(dir / "summary.json"));
  const nlohmann::json timeline = nlohmann::json::parse(fakes::readWholeFile(dir / "timeline.json"));
  EXPECT_TRUE(timeline.is_object() || timeline.is_array());

  const std::string csv = fakes::readWholeFile(dir / "requests.csv");
  const auto lines = std::count(csv.begin(), csv.end(), '\n');
  ASSERT_GE(lines, 1) << "requests.csv has no header";
  const std::int64_t total = summary.at("overall").at("requests").get<std::int64_t>();
  EXPECT_GT(total, 0) << "the scenario served nothing";
  EXPECT_EQ(total, lines - 1) << "summary.json and requests.csv disagree";
  EXPECT_EQ(summary["overall"]["served"].get<std::int64_t>() + summary["overall"]["failed"].get<std::int64_t>(), total);

  std::int64_t by_model = 0;
  for (const auto& m : summary.at("models")) by_model += m.at("requests").get<std::int64_t>();
  EXPECT_EQ(by_model, total);
}

INSTANTIATE_TEST_SUITE_P(Scenarios, ShippedScenario, ::testing::ValuesIn(shippedScenarios()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string name = param_info.param.substr(0, param_info.param.size() - 5);  // drop .json
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace computron
