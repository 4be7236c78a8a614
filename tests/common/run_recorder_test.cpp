// The run recorder's per-token metrics: LatencyHistogram's add(value, count), time per output
// token from request records, inter-token latency from onTokenGaps, refused requests, and the
// columns requests.csv gains for them; each fed by hand, without an engine.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "tests/support/cli_runner.h"
#include "tests/support/requests_csv.h"

namespace computron {
namespace {

constexpr Nanos kMs = 1'000'000;

void expectSameHistogram(const LatencyHistogram& a, const LatencyHistogram& b) {
  EXPECT_EQ(a.count(), b.count());
  EXPECT_EQ(a.mean(), b.mean());  // exact, not near
  EXPECT_EQ(a.max(), b.max());
  for (double q : {0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0})
    EXPECT_EQ(a.quantile(q), b.quantile(q)) << "q " << q;
}

TEST(LatencyHistogram, AddWithACountIsThatManySingleAdds) {
  // Few distinct buckets (the sparse form), then enough to turn dense, with values from 0 ns to
  // about a minute.
  for (int distinct : {5, 200}) {
    std::mt19937_64 rng(static_cast<std::uint64_t>(distinct));
    std::uniform_int_distribution<int> exponent(0, 35);
    std::uniform_int_distribution<std::int64_t> count(0, 50);
    LatencyHistogram once, many;
    for (int i = 0; i < distinct; ++i) {
      const Nanos value = static_cast<Nanos>(rng() % (std::uint64_t{1} << exponent(rng)));
      const std::int64_t n = count(rng);
      once.add(value, n);
      for (std::int64_t k = 0; k < n; ++k) many.add(value);
      expectSameHistogram(once, many);
    }
  }
}

TEST(LatencyHistogram, AddWithACountOfZeroOrLessAddsNothing) {
  LatencyHistogram h;
  h.add(5 * kMs, 0);
  h.add(7 * kMs, -3);
  EXPECT_EQ(h.count(), 0);
  EXPECT_EQ(h.mean(), 0.0);
  EXPECT_EQ(h.max(), 0);
  EXPECT_EQ(h.quantile(0.5), 0);
  h.add(2 * kMs, 4);
  EXPECT_EQ(h.count(), 4);
  EXPECT_EQ(h.mean(), static_cast<double>(2 * kMs));
  EXPECT_EQ(h.quantile(0.99), 2 * kMs);
}

RequestRecord record(RequestId id, ModelId model, Nanos arrival, Nanos first_token, Nanos finish, std::int32_t output_tokens) {
  RequestRecord r;
  r.request.id = id;
  r.request.model = model;
  r.request.arrival = arrival;
  r.request.prompt_tokens = 16;
  r.request.output_tokens = output_tokens;
  r.start = arrival;
  r.first_token = first_token;
  r.finish = finish;
  return r;
}

// A recorder over the embedded default scenario (three models) writing into `dir`, fed:
//   model 0: served, 5 tokens, decode 40 ms (TPOT 10 ms), preempted twice;
//            served, 3 tokens, decode 40 ms (TPOT 20 ms);
//            served, 1 token (no TPOT); failed in its batch, 5 tokens (no TPOT);
//   model 1: refused (too long); rejected by admission control; token gaps 5 ms x 3 and 8 ms x 1;
//   model 2: nothing.
struct Fed {
  nlohmann::json summary;
  std::string table;
};

Fed feedRecorder(const std::filesystem::path& dir) {
  Scenario scenario = parseScenario(defaultScenarioJson(), ".");
  scenario.outputs.dir = dir.string();
  RunRecorder recorder(scenario, "sim");
  RequestRecord a = record(0, 0, 0, 100 * kMs, 140 * kMs, 5);
  a.preemptions = 2;
  recorder.onRequestDone(a);
  recorder.onRequestDone(record(1, 0, 0, 60 * kMs, 100 * kMs, 3));
  recorder.onRequestDone(record(2, 0, 10 * kMs, 50 * kMs, 50 * kMs, 1));
  RequestRecord failed = record(3, 0, 0, 100 * kMs, 140 * kMs, 5);
  failed.ok = false;
  failed.error = "batch failed";
  recorder.onRequestDone(failed);
  RequestRecord refused = record(4, 1, 20 * kMs, 20 * kMs, 20 * kMs, 4000);
  refused.ok = false;
  refused.refused = true;
  refused.error = "prompt + output tokens exceed the model's 2048 positions";
  recorder.onRequestDone(refused);
  RequestRecord rejected = record(5, 1, 30 * kMs, 30 * kMs, 30 * kMs, 4);
  rejected.ok = false;
  rejected.rejected = true;
  rejected.error = "rejected";
  recorder.onRequestDone(rejected);
  recorder.onTokenGaps(1, 5 * kMs, 3);
  recorder.onTokenGaps(1, 8 * kMs, 1);
  recorder.onTokenGaps(1, 9 * kMs, 0);  // nothing
  Fed fed;
  fed.summary = recorder.finish(2 * kNanosPerSecond);
  std::ostringstream table;
  recorder.printTable(fed.summary, table);
  fed.table = table.str();
  return fed;
}

TEST(RunRecorder, TimePerOutputTokenOfServedRequestsWithMoreThanOneToken) {
  fakes::ScratchDir dir;
  const nlohmann::json s = feedRecorder(dir.path() / "out").summary;
  const nlohmann::json& m0 = s["models"][0];
  EXPECT_DOUBLE_EQ(m0["tpot_ms"]["mean"].get<double>(), 15.0);  // (10 + 20) / 2
  EXPECT_NEAR(m0["tpot_ms"]["p50"].get<double>(), 10.0, 0.05);
  EXPECT_NEAR(m0["tpot_ms"]["p90"].get<double>(), 20.0, 0.1);
  EXPECT_NEAR(m0["tpot_ms"]["p99"].get<double>(), 20.0, 0.1);
  EXPECT_DOUBLE_EQ(s["overall"]["tpot_ms"]["mean"].get<double>(), 15.0);
  // Not from token gaps, and none at all for a model without served multi-token requests.
  EXPECT_EQ(m0["itl_ms"]["mean"].get<double>(), 0.0);
  for (const char* key : {"mean", "p50", "p90", "p99"}) {
    EXPECT_EQ(s["models"][1]["tpot_ms"][key].get<double>(), 0.0) << key;
    EXPECT_EQ(s["models"][2]["tpot_ms"][key].get<double>(), 0.0) << key;
  }
  // Served output tokens over the run's 2 s, as throughput_rps counts served requests.
  EXPECT_DOUBLE_EQ(m0["output_tokens_per_s"].get<double>(), (5 + 3 + 1) / 2.0);
  EXPECT_DOUBLE_EQ(m0["throughput_rps"].get<double>(), 3 / 2.0);
  EXPECT_DOUBLE_EQ(s["overall"]["output_tokens_per_s"].get<double>(), (5 + 3 + 1) / 2.0);
  // TTFT gains p90: the served three's are 100, 60 and 40 ms.
  EXPECT_NEAR(m0["ttft_ms"]["p90"].get<double>(), 100.0, 0.5);
}

TEST(RunRecorder, InterTokenLatencyComesFromTokenGapsAlone) {
  fakes::ScratchDir dir;
  const nlohmann::json s = feedRecorder(dir.path() / "out").summary;
  for (const nlohmann::json& j : {s["models"][1], s["overall"]}) {
    EXPECT_DOUBLE_EQ(j["itl_ms"]["mean"].get<double>(), (3 * 5.0 + 8.0) / 4);
    EXPECT_NEAR(j["itl_ms"]["p50"].get<double>(), 5.0, 0.025);
    EXPECT_NEAR(j["itl_ms"]["p90"].get<double>(), 8.0, 0.04);
    EXPECT_NEAR(j["itl_ms"]["p99"].get<double>(), 8.0, 0.04);
  }
  for (const char* key : {"mean", "p50", "p90", "p99"}) EXPECT_EQ(s["models"][2]["itl_ms"][key].get<double>(), 0.0) << key;
}

TEST(RunRecorder, RefusedRequestsAreCountedAndFailed) {
  fakes::ScratchDir dir;
  const nlohmann::json s = feedRecorder(dir.path() / "out").summary;
  const nlohmann::json& m1 = s["models"][1];
  EXPECT_EQ(m1["refused"].get<int>(), 1);
  EXPECT_EQ(m1["rejected"].get<int>(), 1);
  EXPECT_EQ(m1["failed"].get<int>(), 2);
  EXPECT_EQ(m1["served"].get<int>(), 0);
  EXPECT_EQ(s["models"][0]["refused"].get<int>(), 0);
  EXPECT_EQ(s["overall"]["refused"].get<int>(), 1);
  EXPECT_EQ(s["overall"]["failed"].get<int>(), 3);
  EXPECT_EQ(s["overall"]["requests"].get<int>(), 6);
}

TEST(RunRecorder, RequestsCsvEndsWithTpotAndPreemptions) {
  fakes::ScratchDir dir;
  feedRecorder(dir.path() / "out");
  const fakes::RequestsCsv csv = fakes::parseRequestsCsv(fakes::readWholeFile(dir.path() / "out" / "requests.csv"));
  // The columns before them as they were.
  EXPECT_EQ(csv.header, (std::vector<std::string>{"id", "model", "arrival_s", "start_s", "first_token_s", "finish_s",
                                                  "latency_s", "prompt_tokens", "output_tokens", "waited_for_load", "ok",
                                                  "error", "tpot_s", "preemptions"}));
  ASSERT_EQ(csv.rows.size(), 6u);
  const std::vector<std::string> tpot = {"0.010000000", "0.020000000", "", "", "", ""};
  const std::vector<std::string> preemptions = {"2", "0", "0", "0", "0", "0"};
  for (std::size_t i = 0; i < csv.rows.size(); ++i) {
    EXPECT_EQ(csv.at(i, "tpot_s"), tpot[i]) << "row " << i;
    EXPECT_EQ(csv.at(i, "preemptions"), preemptions[i]) << "row " << i;
  }
  EXPECT_EQ(csv.at(4, "error"), "prompt + output tokens exceed the model's 2048 positions");
}

TEST(RunRecorder, TimePerOutputTokenIsRoundedToTheNanosecond) {
  fakes::ScratchDir dir;
  Scenario scenario = parseScenario(defaultScenarioJson(), ".");
  scenario.outputs.dir = (dir.path() / "out").string();
  scenario.outputs.timeline = false;
  RunRecorder recorder(scenario, "sim");
  recorder.onRequestDone(record(0, 0, 0, 0, 10, 4));  // 10 ns over 3 tokens: 3.33 -> 3
  recorder.onRequestDone(record(1, 0, 0, 0, 11, 4));  // 3.67 -> 4
  recorder.onRequestDone(record(2, 0, 0, 0, 0, 2));   // every token at once: 0
  const nlohmann::json s = recorder.finish(kNanosPerSecond);
  const fakes::RequestsCsv csv = fakes::parseRequestsCsv(fakes::readWholeFile(dir.path() / "out" / "requests.csv"));
  ASSERT_EQ(csv.rows.size(), 3u);
  EXPECT_EQ(csv.at(0, "tpot_s"), "0.000000003");
  EXPECT_EQ(csv.at(1, "tpot_s"), "0.000000004");
  EXPECT_EQ(csv.at(2, "tpot_s"), "0.000000000");
  EXPECT_DOUBLE_EQ(s["models"][0]["tpot_ms"]["mean"].get<double>(), 0.000002);  // 7/3 ns, to 6 decimals of ms
}

TEST(RunRecorder, TableShowsMeanTimePerOutputToken) {
  fakes::ScratchDir dir;
  const std::string table = feedRecorder(dir.path() / "out").table;
  std::istringstream lines(table);
  std::string line, header;
  std::vector<std::string> model0;
  while (std::getline(lines, line)) {
    if (line.rfind("model ", 0) == 0) header = line;
    if (line.rfind("opt-13b-0 ", 0) == 0) {
      std::istringstream fields(line);
      for (std::string f; fields >> f;) model0.push_back(f);
    }
  }
  EXPECT_NE(header.find("ttft ms  tpot ms   SLO met"), std::string::npos) << table;
  ASSERT_EQ(model0.size(), 10u) << table;  // name, requests, mean, p50, p99, ttft, tpot, SLO met, swaps, GB
  EXPECT_EQ(model0[6], "15.00") << table;
}

}  // namespace
}  // namespace computron
