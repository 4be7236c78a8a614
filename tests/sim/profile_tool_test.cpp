// `computron profile show|merge|diff`: whole entries replace or join the base's, --only copies members
// into existing entries (and refuses an entry the base lacks), --links takes the link figures,
// each merged file lands in provenance.runs, the result is a valid profile, and bad input exits 2
// naming the file and JSON path without writing; diff gives the ratios at shared grid points.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "common/profile.h"
#include "common/types.h"
#include "common/profile_merge.h"
#include "tests/sim/sim_test_util.h"
#include "tests/support/cli_runner.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

// A second run: the small profile's entry measured again (prefill 10x slower, a power model), plus
// an entry the base lacks, with its own provenance and links.
nlohmann::json newerRun() {
  nlohmann::json p = testing::smallProfile();
  p["provenance"] = {{"tool", "computron calibrate"}, {"date", "2026-12-02T10:00:00Z"}, {"gpu", "X"},
                     {"driver", "1.0"}, {"seconds", 12.5}, {"command", "computron calibrate --models opt-1.3b"}};
  p["links"] = {{"host_link_gbps", 55}};
  p.erase("realtime");
  auto& e = p["models"][0];
  e["prefill"]["ms"] = {{20, 40}, {50, 110}};
  e["power"] = {{"hot_factor", 1.15}, {"heat_ms", 40}, {"recover_ms", 50}};
  nlohmann::json other = e;
  other["spec"] = "opt-2.7b";
  other["tp"] = 1;
  other["pp"] = 1;
  p["models"].push_back(other);
  return p;
}

TEST(ProfileMerge, WholeEntriesReplaceTheBasesAndNewOnesAreAdded) {
  const nlohmann::json base = testing::smallProfile();
  const nlohmann::json merged = mergeProfiles(base, "base.json", {{"dir/new.json", newerRun()}}, {});
  ASSERT_EQ(merged["models"].size(), 2u);
  EXPECT_EQ(merged["models"][0], newerRun()["models"][0]);  // replaced whole, in place
  EXPECT_EQ(merged["models"][1]["spec"], "opt-2.7b");
  EXPECT_EQ(merged["links"], base["links"]);  // links stay without --links
  EXPECT_EQ(merged["provenance"]["date"], base["provenance"]["date"]);
  const nlohmann::json& run = merged["provenance"]["runs"].at(0);
  EXPECT_EQ(run["merged_from"], "new.json");
  EXPECT_EQ(run["entries"], nlohmann::json({"opt-1.3b 2x2", "opt-2.7b 1x1"}));
  EXPECT_EQ(run["members"], "all");
  EXPECT_EQ(run["date"], "2026-12-02T10:00:00Z");
  EXPECT_EQ(run["seconds"], 12.5);
  EXPECT_EQ(run["command"], "computron calibrate --models opt-1.3b");
  EXPECT_FALSE(run.contains("links"));
  const Profile p = readProfile(merged, "merged");
  ASSERT_NE(p.find("opt-1.3b", 2, 2), nullptr);
  EXPECT_DOUBLE_EQ(p.find("opt-1.3b", 2, 2)->prefill.at(4, 64).ms, 110);
  EXPECT_DOUBLE_EQ(p.find("opt-1.3b", 2, 2)->power.hot_factor, 1.15);
}

TEST(ProfileMerge, OnlyCopiesTheNamedMembersIntoExistingEntries) {
  const nlohmann::json base = testing::smallProfile();
  ProfileMergeOptions only_power;
  only_power.only = {"power"};
  nlohmann::json one = newerRun();
  one["models"].erase(1);  // the entry the base has
  const nlohmann::json merged = mergeProfiles(base, "base.json", {{"power.json", one}}, only_power);
  ASSERT_EQ(merged["models"].size(), 1u);
  EXPECT_EQ(merged["models"][0]["prefill"], base["models"][0]["prefill"]);  // the grids stay
  EXPECT_EQ(merged["models"][0]["power"], one["models"][0]["power"]);
  EXPECT_EQ(merged["provenance"]["runs"][0]["members"], nlohmann::json({"power"}));

  // A member the run lacks is removed too: the entry holds what that run measured.
  ProfileMergeOptions only_graph;
  only_graph.only = {"decode_graph_ms", "power"};
  nlohmann::json without = testing::smallProfile();
  nlohmann::json with_graph = merged;
  with_graph["models"][0]["decode_graph_ms"] = 2.5;
  const nlohmann::json cleared = mergeProfiles(with_graph, "base.json", {{"plain.json", without}}, only_graph);
  EXPECT_FALSE(cleared["models"][0].contains("decode_graph_ms"));
  EXPECT_FALSE(cleared["models"][0].contains("power"));

  // An entry the base lacks cannot take members: refused, naming the file and entry.
  try {
    mergeProfiles(base, "base.json", {{"new.json", newerRun()}}, only_power);
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "new.json: $.models[1]: opt-2.7b 1x1 has no entry in base.json to take --only members into (merge it whole "
              "first)");
  }
  ProfileMergeOptions unknown;
  unknown.only = {"speed"};
  EXPECT_THROW(mergeProfiles(base, "base.json", {{"new.json", newerRun()}}, unknown), ConfigError);
}

TEST(ProfileMerge, LinksComeFromTheRunsOnlyWhenAsked) {
  ProfileMergeOptions links;
  links.links = true;
  const nlohmann::json merged = mergeProfiles(testing::smallProfile(), "base.json", {{"new.json", newerRun()}}, links);
  EXPECT_EQ(merged["links"], newerRun()["links"]);
  EXPECT_TRUE(merged["provenance"]["runs"][0]["links"].get<bool>());
  nlohmann::json no_links = newerRun();
  no_links.erase("links");
  EXPECT_THROW(mergeProfiles(testing::smallProfile(), "base.json", {{"new.json", no_links}}, links), ConfigError);
}

TEST(ProfileMerge, MalformedInputIsRefusedWithItsJsonPath) {
  nlohmann::json bad = newerRun();
  bad["models"][0]["prefill"]["batch"] = {4, 1};
  try {
    mergeProfiles(testing::smallProfile(), "base.json", {{"new.json", bad}}, {});
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("new.json: $.models[0].prefill.batch"), std::string::npos) << e.what();
  }
  nlohmann::json bad_base = testing::smallProfile();
  bad_base["models"][0]["spec"] = "no-such-model";
  try {
    mergeProfiles(bad_base, "base.json", {{"new.json", newerRun()}}, {});
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("base.json: $.models[0].spec: unknown model"), std::string::npos) << e.what();
  }
}

TEST(ProfileDiff, RatiosAtSharedGridPoints) {
  const Profile old_profile = readProfile(testing::smallProfile(), "old.json");
  nlohmann::json newer = newerRun();
  newer["models"][0]["decode"]["batch"] = {1, 8};  // shares the batch-1 row only
  newer["models"][0]["decode"]["ms"] = {{0.5, 3}, {2, 3}};
  const ProfileDiff d = diffProfiles(old_profile, readProfile(newer, "new.json"));
  ASSERT_EQ(d.shared.size(), 1u);
  EXPECT_EQ(d.shared[0].spec, "opt-1.3b");
  EXPECT_EQ(d.shared[0].prefill.points, 4);
  EXPECT_DOUBLE_EQ(d.shared[0].prefill.min, 10);
  EXPECT_DOUBLE_EQ(d.shared[0].prefill.max, 10);
  EXPECT_EQ(d.shared[0].decode.points, 2);  // (1, 32): 0.5 / 1 and (1, 128): 3 / 1.5
  EXPECT_DOUBLE_EQ(d.shared[0].decode.min, 0.5);
  EXPECT_DOUBLE_EQ(d.shared[0].decode.median, 1.25);
  EXPECT_DOUBLE_EQ(d.shared[0].decode.max, 2);
  EXPECT_TRUE(d.only_old.empty());
  EXPECT_EQ(d.only_new, std::vector<std::string>{"opt-2.7b 1x1"});
  const std::string text = describeDiff(d, "old.json", "new.json");
  EXPECT_NE(text.find("opt-1.3b      2x2     10.000 / 10.000 / 10.000 (4)    0.500 / 1.250 / 2.000 (2)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("only in new.json: opt-2.7b 1x1"), std::string::npos) << text;
}

TEST(ProfileLookup, SaysWhetherAShapeIsMeasuredInterpolatedOrOutside) {
  nlohmann::json doc = testing::smallProfile();
  doc["models"][0]["decode_graph_ms"] = 2.5;
  const Profile p = readProfile(doc, "p.json");
  const ModelProfile& m = *p.find("opt-1.3b", 2, 2);
  EXPECT_EQ(describeLookup(m, 4, 64),
            "opt-1.3b 2x2 at batch 4, 64 tokens:\n"
            "  prefill of 4 prompts of 64 tokens: 11.000 ms, a measured point\n"
            "  a decode step of 4 sequences at context 64: 2.333 ms, interpolated\n"
            "  a decode graph's capture at batch 4: 2.500 ms\n");
  // Prefill at batch 2 of 40 tokens, bilinear over (1, 16) 2, (1, 64) 4, (4, 16) 5, (4, 64) 11: rows 3 and 8
  // at 40 tokens, a third of the way from batch 1 to 4: 3 + 5 / 3.
  EXPECT_NE(describeLookup(m, 2, 40).find("prompts of 40 tokens: 4.667 ms, interpolated"), std::string::npos)
      << describeLookup(m, 2, 40);
  EXPECT_NE(describeLookup(m, 8, 64).find("outside the measured grid (extrapolated)"), std::string::npos);
}

TEST(ProfileCommand, MergeWritesTheFileAndShowListsIt) {
  fakes::ScratchDir dir;
  std::ofstream(dir.path() / "base.json") << testing::smallProfile().dump();
  std::ofstream(dir.path() / "new.json") << newerRun().dump();
  const std::string base = (dir.path() / "base.json").string(), added = (dir.path() / "new.json").string(),
                    out = (dir.path() / "out.json").string();
  fakes::CommandResult r = fakes::runBinary(COMPUTRON_BINARY, "profile merge " + base + " " + added + " -o " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json written = nlohmann::json::parse(fakes::readWholeFile(out));
  EXPECT_EQ(written, mergeProfiles(testing::smallProfile(), base, {{added, newerRun()}}, {}));

  r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("opt-1.3b      2x2     1-4 (2) x 16-64 (2)       1-4 (2) x 32-128 (2)      1.150x"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("opt-2.7b      1x1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 run merged in"), std::string::npos) << r.output;

  // Bad input: exit 2 naming the file and path, and nothing written.
  std::ofstream(dir.path() / "bad.json") << R"({"format": "computron-profile", "version": 2})";
  const std::string bad_out = (dir.path() / "bad-out.json").string();
  r = fakes::runBinary(COMPUTRON_BINARY, "profile merge " + base + " " + (dir.path() / "bad.json").string() + " -o " + bad_out);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.json: $.version: this build reads profile version 1"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(bad_out));
  r = fakes::runBinary(COMPUTRON_BINARY, "profile merge " + base + " " + added);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--out is required"), std::string::npos) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + (dir.path() / "missing.json").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile diff " + base + " " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("10.000 / 10.000 / 10.000 (4)"), std::string::npos) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile diff " + base);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + out + " --at opt-1.3b:2x2 --batch 4 --tokens 64");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("prefill of 4 prompts of 64 tokens: 110.000 ms, a measured point"), std::string::npos) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + out + " --at opt-1.3b");  // 1x1: no such entry
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("has no entry for opt-1.3b at 1x1"), std::string::npos) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + out + " --at opt-1.3b:2by2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = fakes::runBinary(COMPUTRON_BINARY, "profile frobnicate");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(ProfileCommand, ShippedProfilesAreListed) {
  for (const char* name : {"h200x1.json", "h200x2.json"}) {
    const fs::path path = fs::path(COMPUTRON_SOURCE_DIR) / "scenarios" / "profiles" / name;
    const fakes::CommandResult r = fakes::runBinary(COMPUTRON_BINARY, "profile show " + path.string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("llama-3-8b    1x1"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace computron
