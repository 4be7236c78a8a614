// Profiles (docs/specs.md, "Profiles"): the grid's interpolation, the reader's refusals (naming the
// JSON path, exit code 2 from the command line), the profiled cost model's times worked out by
// hand, and a simulation whose summary says which source timed each model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "common/cost_model.h"
#include "common/profile.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "sim_test_util.h"
#include "tests/support/cli_runner.h"
#include "tests/support/config_error.h"
#include "tests/support/requests_csv.h"

namespace computron {
namespace {

namespace fs = std::filesystem;
using fakes::CommandResult;
using fakes::ScratchDir;

nlohmann::json profileDoc() { return testing::smallProfile(); }

ProfileGrid grid() { return readProfile(profileDoc(), "p.json").models[0].prefill; }

TEST(ProfileGrid, ExactAtEveryGridPoint) {
  const ProfileGrid g = grid();
  for (std::size_t i = 0; i < g.batch.size(); ++i)
    for (std::size_t j = 0; j < g.tokens.size(); ++j) {
      const auto v = g.at(g.batch[i], g.tokens[j]);
      EXPECT_EQ(v.ms, g.ms[i][j]) << i << "," << j;
      EXPECT_FALSE(v.outside);
    }
}

TEST(ProfileGrid, MonotoneAndBoundedBetweenPoints) {
  const ProfileGrid g = grid();
  // Along each axis between two points, values rise from one end's value to the other's.
  for (double b : {1.0, 2.0, 3.0, 4.0}) {
    double last = 0;
    for (double t = 16; t <= 64; t += 0.5) {
      const auto v = g.at(b, t);
      EXPECT_GE(v.ms, last) << b << " " << t;
      EXPECT_GE(v.ms, g.at(b, 16).ms);
      EXPECT_LE(v.ms, g.at(b, 64).ms);
      EXPECT_FALSE(v.outside);
      last = v.ms;
    }
  }
  // Bilinear: the centre is the mean of the four corners.
  EXPECT_DOUBLE_EQ(g.at(2.5, 40).ms, (2 + 4 + 5 + 11) / 4.0);
  EXPECT_DOUBLE_EQ(g.at(1, 40).ms, 3.0);
}

TEST(ProfileGrid, ExtrapolatesFlatBelowAndAlongTheLastSlopeAbove) {
  const ProfileGrid g = grid();
  auto below = g.at(1, 8);
  EXPECT_EQ(below.ms, 2.0);
  EXPECT_TRUE(below.outside);
  // Above 64 tokens at batch 1: slope (4 - 2) / 48 per token.
  auto above = g.at(1, 112);
  EXPECT_DOUBLE_EQ(above.ms, 4 + 2.0 / 48 * 48);
  EXPECT_TRUE(above.outside);
  // Above batch 4 at 16 tokens: slope (5 - 2) / 3 per request.
  EXPECT_DOUBLE_EQ(g.at(8, 16).ms, 5 + 1.0 * 4);
  // A falling last segment is taken as flat.
  nlohmann::json doc = profileDoc();
  doc["models"][0]["prefill"]["ms"] = {{2, 1}, {5, 11}};
  const ProfileGrid falling = readProfile(doc, "p.json").models[0].prefill;
  EXPECT_EQ(falling.at(1, 1000).ms, 1.0);
}

std::string refusal(const nlohmann::json& doc) {
  return fakes::configErrorOf([&] { readProfile(doc, "p.json"); }, "accepted");
}

TEST(ProfileReader, RefusesMalformedProfilesNamingThePath) {
  nlohmann::json missing = profileDoc();
  missing["models"][0].erase("batch_tail_ms");
  EXPECT_NE(refusal(missing).find("p.json: $.models[0]"), std::string::npos) << refusal(missing);
  EXPECT_NE(refusal(missing).find("batch_tail_ms"), std::string::npos);

  nlohmann::json unordered = profileDoc();
  unordered["models"][0]["decode"]["context"] = {128, 32};
  EXPECT_NE(refusal(unordered).find("p.json: $.models[0].decode.context[1]: the grid must be strictly increasing"),
            std::string::npos)
      << refusal(unordered);

  nlohmann::json unknown = profileDoc();
  unknown["models"][0]["spec"] = "opt-999b";
  EXPECT_NE(refusal(unknown).find("p.json: $.models[0].spec: unknown model \"opt-999b\""), std::string::npos)
      << refusal(unknown);

  nlohmann::json ragged = profileDoc();
  ragged["models"][0]["prefill"]["ms"][1] = {5};
  EXPECT_NE(refusal(ragged).find("$.models[0].prefill.ms[1]: has 1 values but the grid has 2"), std::string::npos)
      << refusal(ragged);

  nlohmann::json zero = profileDoc();
  zero["models"][0]["decode"]["ms"][0][1] = 0;
  EXPECT_NE(refusal(zero).find("$.models[0].decode.ms[0][1]: a time must be greater than 0"), std::string::npos)
      << refusal(zero);

  nlohmann::json format = profileDoc();
  format["format"] = "something";
  EXPECT_NE(refusal(format).find("$.format"), std::string::npos);
  nlohmann::json twice = profileDoc();
  twice["models"].push_back(twice["models"][0]);
  EXPECT_NE(refusal(twice).find("$.models[1]: a second profile of opt-1.3b"), std::string::npos) << refusal(twice);
}

ModelDeployment deployment(const std::string& spec, int tp, int pp) {
  ModelDeployment d;
  d.name = "m";
  d.spec = modelPreset(spec);
  d.tp = tp;
  d.pp = pp;
  for (int g = 0; g < tp * pp; ++g) d.gpus.push_back(g);
  return d;
}

Request request(std::int32_t prompt, std::int32_t output) {
  Request r;
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  return r;
}

TEST(ProfiledCostModel, TimesABatchFromTheGridsByHand) {
  ClusterSpec cluster = clusterPreset("a100-40gb-x4");
  auto profile = std::make_shared<const Profile>(readProfile(profileDoc(), "p.json"));
  ProfiledCostModel cost(cluster, profile);
  const ModelDeployment d = deployment("opt-1.3b", 2, 2);
  // Two requests of prompts 16 and 48 (mean 32), outputs 1 and 3: prefill at batch 2, 32 tokens:
  // rows at 16..64 give 2 + (4-2)*16/48 and 5 + 6*16/48 = 2.6667 and 7; batch 2 of 1..4: one third.
  // The lengths differ, so the roofline's ratio of these prompts to two of 32 tokens scales it.
  const BatchTimes t = cost.batchTimes(d, {request(16, 1), request(48, 3)});
  const double row1 = 2 + 2.0 * 16 / 48, row4 = 5 + 6.0 * 16 / 48;
  const RooflineCostModel roofline(cluster);
  const double mixed = static_cast<double>(roofline.prefillPass(d, 64, 16 * 17 / 2 + 48 * 49 / 2)) /
                       static_cast<double>(roofline.prefillPass(d, 64, 2 * 32 * 33 / 2));
  EXPECT_GE(mixed, 1.0);  // 64 tokens of opt-1.3b read weights more than they compute: about 1
  const double prefill = (row1 + (row4 - row1) / 3) * mixed;
  EXPECT_EQ(t.first_token, static_cast<Nanos>(std::llround(prefill * 1e6)));
  // Equal prompts take the grid's time exactly, at its points and between them.
  EXPECT_EQ(cost.batchTimes(d, {request(16, 1), request(16, 1), request(16, 1), request(16, 1)}).first_token, 5'000'000);
  EXPECT_EQ(cost.prefillStep(d, {32, 32}).time, static_cast<Nanos>(std::llround((row1 + (row4 - row1) / 3 + 0.25) * 1e6)));
  // Past the grid's longest prompt (64), the roofline's shape from there on.
  const double beyond = 4.0 * static_cast<double>(roofline.prefillPass(d, 100, 100 * 101 / 2)) /
                        static_cast<double>(roofline.prefillPass(d, 64, 64 * 65 / 2));
  EXPECT_EQ(cost.batchTimes(d, {request(100, 1)}).first_token, static_cast<Nanos>(std::llround(beyond * 1e6)));
  // Long prompts are bound by compute, and mixed lengths cost more than equal ones of their mean.
  EXPECT_GT(cost.prefillStep(d, {1000, 3000}).time, cost.prefillStep(d, {2000, 2000}).time);
  // The first request is done with its first token, so decode steps 1 and 2 run the second alone:
  // batch 1 at contexts 48 + 1 and 48 + 2, row 1 + 0.5*(c-32)/96.
  auto step = [](double c) { return static_cast<Nanos>(std::llround((1 + 0.5 * (c - 32) / 96) * 1e6)); };
  ASSERT_EQ(t.finish.size(), 2u);
  EXPECT_EQ(t.finish[0], t.first_token);
  EXPECT_EQ(t.finish[1], t.first_token + step(49) + step(50));
  // Both generating through the steps (outputs 3 and 3): batch 2 at mean contexts 33 and 34, rows
  // 1 + 0.5*(c-32)/96 and 2 + (c-32)/96, batch 2 one third of the way.
  auto step2 = [](double c) {
    const double r1 = 1 + 0.5 * (c - 32) / 96, r4 = 2 + (c - 32) / 96;
    return static_cast<Nanos>(std::llround((r1 + (r4 - r1) / 3) * 1e6));
  };
  const BatchTimes both = cost.batchTimes(d, {request(16, 3), request(48, 3)});
  EXPECT_EQ(both.finish[0], both.first_token + step2(33) + step2(34));
  EXPECT_EQ(both.finish[1], both.finish[0]);
  EXPECT_EQ(t.total, t.finish[1] + 250'000);
  EXPECT_FALSE(t.outside_profile);
  // The first batch after a load pays the measured extra before its first token.
  const BatchTimes cold = cost.batchTimes(d, {request(16, 1), request(48, 3)}, /*first_after_load=*/true);
  EXPECT_EQ(cold.first_token, t.first_token + 7'000'000);
  EXPECT_EQ(cold.total, t.total + 7'000'000);
  // A prompt beyond the grid is extrapolated and says so.
  EXPECT_TRUE(cost.batchTimes(d, {request(100, 1)}).outside_profile);
  EXPECT_EQ(cost.sourceFor(d), "profile");
}

// The prefill shape fitted to the grid: the largest batch's time per token is a line in (P+1)/2
// over its prompts of 256 tokens and more.
nlohmann::json longPromptDoc(double per_token_ms, double per_pair_ms) {
  nlohmann::json doc = profileDoc();
  const std::vector<double> prompts{16, 256, 1024, 4096};
  std::vector<double> row4;
  for (double p : prompts) row4.push_back(4 * (per_token_ms * p + per_pair_ms * 0.5 * p * (p + 1)));
  row4[0] = 20;  // a short prompt off the line (weights read, not compute): not fitted
  doc["models"][0]["prefill"] = {{"batch", {1, 4}}, {"prompt_tokens", prompts}, {"ms", {{2, 4, 9, 30}, row4}}};
  return doc;
}

TEST(PrefillShape, FitsTheLargestBatchsLongPromptsExactly) {
  const ModelProfile m = readProfile(longPromptDoc(0.02, 1e-5), "p.json").models[0];
  ASSERT_TRUE(m.prefill_shape.measured);
  EXPECT_NEAR(m.prefill_shape.per_token_ms, 0.02, 1e-12);
  EXPECT_NEAR(m.prefill_shape.per_pair_ms, 1e-5, 1e-15);
  // A flat time per token: no attention term.
  ProfileGrid row;
  row.batch = {8};
  row.tokens = {256, 1024};
  row.ms = {{8 * 256 * 0.02, 8 * 1024 * 0.02}};
  const PrefillShape flat = fitPrefillShape(row);
  ASSERT_TRUE(flat.measured);
  EXPECT_DOUBLE_EQ(flat.per_token_ms, 0.02);
  EXPECT_EQ(flat.per_pair_ms, 0);
  // A falling one (fixed costs spread over more tokens, as TP 2 rows of batch 8 show): no measured
  // shape, the roofline's applies.
  row.ms = {{8 * 256 * 0.03, 8 * 1024 * 0.01}};
  EXPECT_FALSE(fitPrefillShape(row).measured);
  // Fewer than two prompts of 256 tokens or more: none either.
  EXPECT_FALSE(readProfile(profileDoc(), "p.json").models[0].prefill_shape.measured);
  row.ms = {{8 * 64 * 0.02, 8 * 1024 * 0.02}};
  row.tokens = {64, 1024};
  EXPECT_FALSE(fitPrefillShape(row).measured);
}

TEST(PrefillShape, ShapesMixedAndLongPromptsByTheMeasuredAttention) {
  const double a = 0.02, b = 1e-5;
  auto profile = std::make_shared<const Profile>(readProfile(longPromptDoc(a, b), "p.json"));
  const ClusterSpec cluster = clusterPreset("a100-40gb-x4");
  ProfiledCostModel cost(cluster, profile);
  const ModelDeployment d = deployment("opt-1.3b", 2, 2);
  auto shape = [&](double tokens, double pairs) { return a * tokens + b * pairs; };
  auto pairs = [](double p) { return 0.5 * p * (p + 1); };
  // Equal prompts on the grid: the grid's time (plus the step's tail of 0.25 ms).
  const double grid4 = 4 * shape(1024, pairs(1024));
  EXPECT_EQ(cost.prefillStep(d, {1024, 1024, 1024, 1024}).time, static_cast<Nanos>(std::llround((grid4 + 0.25) * 1e6)));
  // Mixed prompts of mean 1024: the grid's time there times the shape's ratio.
  const double mixed = grid4 * shape(4096, pairs(256) + pairs(768) + pairs(1280) + pairs(1792)) / shape(4096, 4 * pairs(1024));
  EXPECT_EQ(cost.prefillStep(d, {256, 768, 1280, 1792}).time, static_cast<Nanos>(std::llround((mixed + 0.25) * 1e6)));
  // Past the grid's longest prompt (4096): its time there, grown by the shape.
  const double grid4096 = 4 * shape(4096, pairs(4096));
  const double beyond = grid4096 * shape(4 * 8192, 4 * pairs(8192)) / shape(4 * 4096, 4 * pairs(4096));
  const StepTime past = cost.prefillStep(d, {8192, 8192, 8192, 8192});
  EXPECT_EQ(past.time, static_cast<Nanos>(std::llround((beyond + 0.25) * 1e6)));
  EXPECT_TRUE(past.outside_profile);
}

TEST(ProfiledCostModel, BatchesAfterIdleGpusPayTheMeasuredExtra) {
  nlohmann::json doc = profileDoc();
  doc["models"][0]["idle"] = {{"gap_ms", {20, 200}}, {"extra_ms", {1, 3}}};
  auto profile = std::make_shared<const Profile>(readProfile(doc, "p.json"));
  const ModelProfile& m = profile->models[0];
  EXPECT_DOUBLE_EQ(m.idleExtraMs(0), 0);
  EXPECT_DOUBLE_EQ(m.idleExtraMs(10), 0.5);  // from (0, 0) to the first point
  EXPECT_DOUBLE_EQ(m.idleExtraMs(20), 1);
  EXPECT_DOUBLE_EQ(m.idleExtraMs(110), 2);
  EXPECT_DOUBLE_EQ(m.idleExtraMs(5000), 3);  // flat after the last
  ClusterSpec cluster = clusterPreset("a100-40gb-x4");
  ProfiledCostModel cost(cluster, profile);
  const ModelDeployment d = deployment("opt-1.3b", 2, 2);
  const BatchTimes busy = cost.batchTimes(d, {request(16, 2)});
  const BatchTimes idle = cost.batchTimes(d, {request(16, 2)}, false, 110 * kNanosPerMilli);
  EXPECT_EQ(idle.first_token, busy.first_token + 2'000'000);
  EXPECT_EQ(idle.total, busy.total + 2'000'000);
  nlohmann::json bad = doc;
  bad["models"][0]["idle"]["extra_ms"] = {1};
  EXPECT_NE(refusal(bad).find("$.models[0].idle.extra_ms: expected an array with one value per gap_ms point"),
            std::string::npos)
      << refusal(bad);
}

// The power model: prefill on GPUs that have worked past heat_ms runs hot_factor slower, for the
// part of its grid time that the grid (timed after idle) ran cool; decode steps do not change.
TEST(ProfiledCostModel, PrefillRunsHotAfterHeatMsOfWorkOnly) {
  nlohmann::json doc = profileDoc();
  doc["models"][0]["power"] = {{"hot_factor", 1.5}, {"heat_ms", 3}, {"recover_ms", 5}};
  auto profile = std::make_shared<const Profile>(readProfile(doc, "p.json"));
  const ModelProfile& m = profile->models[0];
  EXPECT_DOUBLE_EQ(m.hotPrefillExtraMs(2, 0), 0);      // 3 ms of cool work left: all of it cool
  EXPECT_DOUBLE_EQ(m.hotPrefillExtraMs(2, 2.25), 0.625);  // 0.75 ms cool, then 1.25 ms at 1.5x
  EXPECT_DOUBLE_EQ(m.hotPrefillExtraMs(2, 10), 1);     // all hot
  EXPECT_DOUBLE_EQ(m.hotPrefillExtraMs(20, 10), 1.5);  // the grid's own 3 cool ms, now hot
  EXPECT_DOUBLE_EQ(m.hotPrefillExtraMs(20, 0), 0);
  ClusterSpec cluster = clusterPreset("a100-40gb-x4");
  ProfiledCostModel cost(cluster, profile);
  const ModelDeployment d = deployment("opt-1.3b", 2, 2);
  EXPECT_EQ(cost.powerRecover(d), 5'000'000);
  const BatchTimes cool = cost.batchTimes(d, {request(16, 3)});
  const BatchTimes hot = cost.batchTimes(d, {request(16, 3)}, false, 0, 10 * kNanosPerMilli);
  EXPECT_EQ(hot.first_token, cool.first_token + 1'000'000);  // 2 ms of prefill at 1.5x
  EXPECT_EQ(hot.total, cool.total + 1'000'000);                // the decode steps as before
  EXPECT_EQ(cost.prefillStep(d, {16}, false, 0, 10 * kNanosPerMilli).time, cost.prefillStep(d, {16}).time + 1'000'000);
  EXPECT_EQ(cost.decodeStep(d, 1, 32).time, ProfiledCostModel(cluster, std::make_shared<const Profile>(
                                                                             readProfile(profileDoc(), "p.json")))
                                                .decodeStep(d, 1, 32)
                                                .time);
  // Without `power`, no power model.
  EXPECT_EQ(ProfiledCostModel(cluster, std::make_shared<const Profile>(readProfile(profileDoc(), "p.json"))).powerRecover(d), 0);
  nlohmann::json bad = doc;
  bad["models"][0]["power"]["hot_factor"] = 0.5;
  EXPECT_NE(refusal(bad).find("$.models[0].power.hot_factor"), std::string::npos) << refusal(bad);
  bad = doc;
  bad["models"][0]["power"].erase("recover_ms");
  EXPECT_NE(refusal(bad).find("$.models[0].power"), std::string::npos) << refusal(bad);
}

// calibrate --power-probe's figures to the power model: a synthetic GPU that runs a 20 ms shape cool
// for 40 ms of work, then 1.15x slower, and is rested after 50 ms idle.
TEST(PowerProbe, RecoversHotFactorHeatAndRecoverFromARamp) {
  PowerProbe probe;
  double since = 0, busy = 0;
  while (since < 3.0) {
    const double cool_left = std::max(0.0, 40.0 - busy);
    const double ms = cool_left >= 20 ? 20 : cool_left + (20 - cool_left) * 1.15;
    probe.ramp.emplace_back(since, ms);
    busy += ms;
    since += ms / 1000 + 0.0001;  // the host's gap between runs
  }
  probe.after_gap = {{50, 20.2}, {200, 20.0}, {1000, 20.0}};
  const nlohmann::json p = powerFromProbe(probe);
  EXPECT_NEAR(p["hot_factor"].get<double>(), 1.15, 1e-9);
  EXPECT_NEAR(p["heat_ms"].get<double>(), 40.0, 0.05);
  EXPECT_EQ(p["recover_ms"].get<double>(), 50);
  EXPECT_EQ(p["probe"]["cool_ms"].get<double>(), 20.0);
  // Read back as a profile's `power`.
  nlohmann::json doc = profileDoc();
  doc["models"][0]["power"] = p;
  EXPECT_DOUBLE_EQ(readProfile(doc, "p.json").models[0].power.hot_factor, 1.15);
  // Still hot after 200 ms: recover is the next gap that ran cool.
  probe.after_gap = {{50, 22.9}, {200, 22.0}, {1000, 20.0}};
  EXPECT_EQ(powerFromProbe(probe)["recover_ms"].get<double>(), 1000);
  // A GPU whose speed does not move: no power model.
  PowerProbe flat;
  for (int i = 0; i < 100; ++i) flat.ramp.emplace_back(i * 0.03, 20.0);
  flat.after_gap = {{50, 20.0}, {200, 20.0}, {1000, 20.0}};
  EXPECT_EQ(powerFromProbe(flat)["hot_factor"].get<double>(), 1.0);
  EXPECT_EQ(powerFromProbe(flat)["heat_ms"].get<double>(), 0.0);
}

// One model, one request at a time (max_batch 1), replaying a computron trace in the simulator
// with the profile without `power` ("plain.json") or with hot_factor 1.5 after 3 ms of work,
// rested after 5 ms ("hot.json"); the first batch after the load is prefill and tail only.
class PowerSimulation {
 public:
  PowerSimulation() {
    nlohmann::json plain = profileDoc();
    plain["models"][0]["first_batch_extra_ms"] = 0;
    nlohmann::json hot = plain;
    hot["models"][0]["power"] = {{"hot_factor", 1.5}, {"heat_ms", 3}, {"recover_ms", 5}};
    std::ofstream(dir_.path() / "plain.json") << plain.dump();
    std::ofstream(dir_.path() / "hot.json") << hot.dump();
  }
  // Runs `trace` (rows after the header) with `profile` into folder `out`; returns each request's
  // `column` of requests.csv by id.
  std::map<std::string, double> run(const std::string& profile, const std::string& out, const std::string& trace,
                                    const std::string& column) {
    nlohmann::json doc = testing::smallScenario();
    doc["duration_s"] = 5;
    doc["models"][0]["count"] = 1;
    doc["models"][0]["max_batch"] = 1;
    doc["cluster"] = {{"preset", "a100-40gb-x4"}, {"profile", profile}};
    return testing::simulateTrace(dir_.path(), doc, trace, out, column);
  }

 private:
  ScratchDir dir_;
};

// Three requests queued at once run back to back, so the second and third start on a working GPU
// and their prefill runs hot; a fourth after a rest runs cool.
TEST(ProfiledSimulation, BackToBackPrefillRunsHotAndARestCoolsTheGpu) {
  PowerSimulation sim;
  // After the load (well under 2 s): three at 2 s, one at 3 s. B=1, P=16: prefill 2 ms + tail 0.25 ms.
  const std::string trace = "0,m,2000000000,16,1\n1,m,2000000000,16,1\n2,m,2000000000,16,1\n3,m,3000000000,16,1\n";
  const auto a = sim.run("plain.json", "a", trace, "finish_s"), b = sim.run("hot.json", "b", trace, "finish_s");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_NEAR(b.at("0") - a.at("0"), 0, 2e-9);         // started after the load: cool
  EXPECT_NEAR(b.at("1") - a.at("1"), 0.000625, 2e-9);  // 2.25 ms of work before it
  EXPECT_NEAR(b.at("2") - a.at("2"), 0.001625, 2e-9);  // and 1 ms more (all hot)
  EXPECT_NEAR(b.at("3") - a.at("3"), 0, 2e-9);         // after a second's rest: cool
}

// Decode steps do not heat the GPU and let it cool as idling does (measured: prefill right after
// 1 s of decode ran at its rested speed, also when the GPU had been hot before the decode). Two
// requests at once: the second's prefill runs hot after a short decode and cool after one longer
// than recover_ms.
TEST(ProfiledSimulation, DecodeStepsLetTheGpuCool) {
  PowerSimulation sim;
  // Decode steps of batch 1 take about 1 ms (the grid): 2 of them (3 tokens) are under
  // recover_ms, 9 (10 tokens) over it.
  auto trace = [](int output) {
    const std::string o = std::to_string(output);
    return "0,m,2000000000,16," + o + "\n1,m,2000000000,16," + o + "\n";
  };
  const auto short_plain = sim.run("plain.json", "a", trace(3), "first_token_s");
  const auto short_hot = sim.run("hot.json", "b", trace(3), "first_token_s");
  const auto long_plain = sim.run("plain.json", "c", trace(10), "first_token_s");
  const auto long_hot = sim.run("hot.json", "d", trace(10), "first_token_s");
  ASSERT_EQ(short_hot.size(), 2u);
  ASSERT_EQ(long_hot.size(), 2u);
  EXPECT_NEAR(short_hot.at("0") - short_plain.at("0"), 0, 2e-9);
  EXPECT_NEAR(long_hot.at("0") - long_plain.at("0"), 0, 2e-9);
  EXPECT_GT(short_hot.at("1") - short_plain.at("1"), 0.0005);  // 2 ms of decode: still hot
  EXPECT_NEAR(long_hot.at("1") - long_plain.at("1"), 0, 2e-9);  // 9 ms of decode: cool again
}

TEST(ProfiledCostModel, ModelsOutsideTheProfileKeepTheRoofline) {
  ClusterSpec cluster = clusterPreset("a100-40gb-x4");
  auto profile = std::make_shared<const Profile>(readProfile(profileDoc(), "p.json"));
  ProfiledCostModel cost(cluster, profile);
  RooflineCostModel roofline(cluster);
  const ModelDeployment other = deployment("opt-1.3b", 1, 1);  // a layout the profile lacks
  const std::vector<Request> batch = {request(64, 4), request(32, 8)};
  const BatchTimes a = cost.batchTimes(other, batch), b = roofline.batchTimes(other, batch);
  EXPECT_EQ(a.first_token, b.first_token);
  EXPECT_EQ(a.finish, b.finish);
  EXPECT_EQ(a.total, b.total);
  EXPECT_EQ(cost.sourceFor(other), "roofline");
}

TEST(ProfiledSimulation, SummarySaysWhichSourceTimedEachModelAndLinksComeFromTheProfile) {
  ScratchDir dir;
  std::ofstream(dir.path() / "p.json") << profileDoc().dump();
  nlohmann::json doc = testing::smallScenario();
  doc["cluster"] = {{"preset", "a100-40gb-x4"}, {"profile", "p.json"}};
  doc["models"].push_back(
      {{"name", "big"}, {"spec", "opt-2.7b"}, {"tp", 2}, {"pp", 2}, {"gpus", "all"}, {"max_batch", 4}});
  doc["workload"]["rates"] = {5, 2, 1, 1};
  const Scenario s = parseScenario(doc, dir.path().string());
  ASSERT_TRUE(s.cluster.profile);
  EXPECT_DOUBLE_EQ(s.cluster.gpus[0].host_link_bandwidth, 20e9);
  EXPECT_EQ(s.cluster.gpus[3].host_link_latency, 100'000);
  EXPECT_DOUBLE_EQ(s.cluster.nvlink_bandwidth, 50e9);
  EXPECT_EQ(s.cluster.evict_latency, 30'000);
  const nlohmann::json summary = sim::runScenario(s, nullptr);
  const nlohmann::json& timing = summary.at("timing");
  EXPECT_EQ(timing["profile"], "p.json");
  EXPECT_EQ(timing["models"]["m-0"]["source"], "profile") << timing.dump(2);
  EXPECT_EQ(timing["models"]["m-0"]["prefill_shape"], "roofline");  // prompts 16 and 64 only
  EXPECT_FALSE(timing["models"]["big"].contains("prefill_shape"));
  EXPECT_GT(timing["models"]["m-0"]["batches"].get<int>(), 0);
  EXPECT_EQ(timing["models"]["big"]["source"], "roofline");
  ASSERT_FALSE(timing["warnings"].empty());
  EXPECT_NE(timing["warnings"][0].get<std::string>().find("model big"), std::string::npos);
  // A key given in the cluster node wins over the profile's figure.
  doc["cluster"]["host_link_gbps"] = 10;
  EXPECT_DOUBLE_EQ(parseScenario(doc, dir.path().string()).cluster.gpus[0].host_link_bandwidth, 10e9);
  // Without a profile there is no timing member (runs keep their summary byte for byte).
  EXPECT_FALSE(sim::runScenario(parseScenario(testing::smallScenario(), ""), nullptr).contains("timing"));
}

TEST(ProfiledSimulation, EveryRequestWaitsTheDriversWakeAndTheSharedHostFigureCapsTheNode) {
  ScratchDir dir;
  nlohmann::json profile = profileDoc();
  profile["links"]["shared_host_gbps"] = 30;  // below 4 x 20 GB/s
  profile["realtime"] = {{"wake_ms", 0.25}};
  std::ofstream(dir.path() / "p.json") << profile.dump();
  nlohmann::json doc = testing::smallScenario();
  doc["models"][0]["count"] = 1;
  doc["workload"] = {{"type", "gamma"}, {"rates", {2}}, {"cv", 1}, {"prompt_tokens", 32}, {"output_tokens", 4}};
  doc["cluster"] = {{"preset", "a100-40gb-x4"}, {"profile", "p.json"}};
  Scenario with_wake = parseScenario(doc, dir.path().string());
  ASSERT_EQ(with_wake.cluster.uplinks.size(), 1u);
  EXPECT_DOUBLE_EQ(with_wake.cluster.uplinks[0].bandwidth, 30e9);
  EXPECT_EQ(with_wake.cluster.uplinks[0].gpus.size(), 4u);
  profile["realtime"]["wake_ms"] = 0;
  std::ofstream(dir.path() / "p.json") << profile.dump();
  Scenario without = parseScenario(doc, dir.path().string());
  with_wake.outputs.dir = (dir.path() / "a").string();
  without.outputs.dir = (dir.path() / "b").string();
  sim::runScenario(with_wake, nullptr);
  sim::runScenario(without, nullptr);
  // One model, resident after its first load, requests far apart: each request's latency grows by
  // exactly the wake-up (0.25 ms) and nothing else moves but the arrival order's timing.
  auto latencies = [](const fs::path& csv) {
    std::vector<double> out;
    const fakes::RequestsCsv rows = fakes::parseRequestsCsv(fakes::readWholeFile(csv));
    for (std::size_t i = 0; i < rows.rows.size(); ++i) out.push_back(std::stod(rows.at(i, "latency_s")));
    return out;
  };
  const auto a = latencies(dir.path() / "a" / "requests.csv"), b = latencies(dir.path() / "b" / "requests.csv");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 10u);
  int shifted = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double la = a[i], lb = b[i];
    if (std::abs(la - lb - 0.00025) < 2e-9) ++shifted;
    EXPECT_GE(la, lb + 0.00025 - 2e-9) << i;
  }
  EXPECT_GE(shifted, static_cast<int>(a.size()) * 9 / 10);
}

TEST(ProfileCli, MalformedProfileExitsTwoNamingTheJsonPath) {
  ScratchDir dir;
  nlohmann::json bad = profileDoc();
  bad["models"][0]["prefill"]["batch"] = {4, 1};
  std::ofstream(dir.path() / "bad.json") << bad.dump();
  nlohmann::json doc = testing::smallScenario();
  const fs::path scenario = dir.path() / "s.json";
  std::ofstream(scenario) << doc.dump(2);
  const CommandResult r = fakes::runBinary(COMPUTRON_BINARY, "sim " + scenario.string() + " --set cluster.profile=bad.json --no-files");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("$.models[0].prefill.batch[1]: the grid must be strictly increasing"), std::string::npos) << r.err;
  const CommandResult missing =
      fakes::runBinary(COMPUTRON_BINARY, "sim " + scenario.string() + " --set cluster.profile=none.json --no-files");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("$.cluster.profile: no profile file"), std::string::npos) << missing.err;
  // A model the profile does not hold is timed by the roofline, and the command says so.
  std::ofstream(dir.path() / "good.json") << profileDoc().dump();
  const CommandResult other = fakes::runBinary(
      COMPUTRON_BINARY, "sim " + scenario.string() + " --set cluster.profile=good.json --set 'models[0].spec=opt-2.7b' --no-files");
  EXPECT_EQ(other.exit_code, 0) << other.output;
  EXPECT_NE(other.err.find("warning: model m-0: the profile has no entry for its preset and layout; the roofline timed it"),
            std::string::npos)
      << other.err;
}

}  // namespace
}  // namespace computron
