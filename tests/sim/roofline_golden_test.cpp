// The roofline's outputs are pinned: shipped scenarios without a profile give summary.json and
// requests.csv byte for byte as recorded in tests/data/roofline_golden/ (written by the build
// before profiles existed). A change to the cost model or the engine that moves any result fails
// here; if the move is meant, re-record the files and say so in the commit.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/support/cli_runner.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

class RooflineGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(RooflineGolden, OutputsMatchTheRecordedBytes) {
  const std::string name = GetParam();
  const fs::path source = COMPUTRON_SOURCE_DIR;
  fakes::ScratchDir dir;
  const auto r = fakes::runBinary(COMPUTRON_BINARY, "sim " + (source / "scenarios" / (name + ".json")).string() + " -o " +
                                                        (dir.path() / "out").string() + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* file : {"summary.json", "requests.csv"}) {
    const std::string want = fakes::readWholeFile(source / "tests" / "data" / "roofline_golden" / name / file);
    ASSERT_FALSE(want.empty()) << file;
    EXPECT_TRUE(fakes::readWholeFile(dir.path() / "out" / file) == want) << name << "/" << file << " differs";
  }
}

INSTANTIATE_TEST_SUITE_P(Shipped, RooflineGolden,
                         ::testing::Values("random-3models-rates10-1-1-cv4", "coldstart-opt13b-h200",
                                           "random-6models-rates10-10-1-1-1-1-cv1"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (char& c : n)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

}  // namespace
}  // namespace computron
