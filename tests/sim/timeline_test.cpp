// timeline.json is a valid Chrome trace that Perfetto draws as written: no two complete ("X")
// events of one track overlap without nesting (they may not even touch out of order), every async
// begin has its end, and every process and thread that carries an event has a name. Run on the
// shipped scenarios, including multipath routing and layer-pipelined cold starts.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/json_reader.h"
#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

struct TimelineCase {
  const char* label;
  const char* scenario;  // under scenarios/; empty: the embedded default
  std::vector<std::string> overrides;
};

// Timestamps are microseconds with three decimals: compared as integer nanoseconds.
std::int64_t nanos(const nlohmann::json& micros) { return std::llround(micros.get<double>() * 1000.0); }

struct Span {
  std::int64_t start, end;
  std::string name;
};

// Checks one timeline document; failures name the culprit.
void checkTimeline(const nlohmann::json& doc, const std::string& label) {
  ASSERT_TRUE(doc.contains("traceEvents")) << label;
  std::set<int> named_processes;
  std::set<std::pair<int, int>> named_threads;
  std::set<int> used_processes;
  std::set<std::pair<int, int>> used_threads;
  std::map<std::pair<int, int>, std::vector<Span>> complete;  // by (pid, tid)
  std::map<std::string, int> open_async;                      // by (pid, cat, id)
  std::size_t spans = 0;
  for (const auto& e : doc["traceEvents"]) {
    const std::string ph = e.at("ph").get<std::string>();
    const int pid = e.at("pid").get<int>();
    if (ph == "M") {
      const std::string what = e.at("name").get<std::string>();
      if (what == "process_name") named_processes.insert(pid);
      if (what == "thread_name") named_threads.insert({pid, e.at("tid").get<int>()});
      continue;
    }
    const int tid = e.value("tid", 0);
    used_processes.insert(pid);
    used_threads.insert({pid, tid});
    if (ph == "X") {
      const std::int64_t start = nanos(e.at("ts"));
      const std::int64_t end = start + nanos(e.at("dur"));
      ASSERT_GE(end, start) << label;
      complete[{pid, tid}].push_back({start, end, e.at("name").get<std::string>()});
      ++spans;
    } else if (ph == "b" || ph == "e") {
      const std::string key = std::to_string(pid) + "/" + e.at("cat").get<std::string>() + "/" + e.at("id").dump();
      open_async[key] += ph == "b" ? 1 : -1;
      EXPECT_GE(open_async[key], 0) << label << ": async end before its begin: " << key;
    } else {
      ADD_FAILURE() << label << ": unexpected event phase " << ph;
    }
  }
  EXPECT_GT(spans, 0u) << label;
  for (const auto& [key, open] : open_async) EXPECT_EQ(open, 0) << label << ": async begin without its end: " << key;
  for (int pid : used_processes) EXPECT_TRUE(named_processes.count(pid)) << label << ": process " << pid << " has no name";
  for (const auto& t : used_threads)
    EXPECT_TRUE(named_threads.count(t)) << label << ": thread " << t.first << "/" << t.second << " has no name";
  for (auto& [track, list] : complete) {
    std::sort(list.begin(), list.end(), [](const Span& a, const Span& b) {
      return a.start != b.start ? a.start < b.start : a.end < b.end;
    });
    for (std::size_t i = 1; i < list.size(); ++i) {
      EXPECT_LE(list[i - 1].end, list[i].start)
          << label << ": on track " << track.first << "/" << track.second << ", '" << list[i - 1].name << "' ["
          << list[i - 1].start << ", " << list[i - 1].end << ") overlaps '" << list[i].name << "' [" << list[i].start
          << ", " << list[i].end << ")";
    }
  }
}

class ShippedTimeline : public ::testing::TestWithParam<TimelineCase> {};

TEST_P(ShippedTimeline, HasNoOverlapsOnATrackAndNamesEveryTrack) {
  const TimelineCase& c = GetParam();
  const fs::path out = fs::temp_directory_path() /
                       ("computron-timeline-" + std::to_string(::getpid()) + "-" + std::string(c.label));
  fs::remove_all(out);
  Scenario scenario;
  if (std::string(c.scenario).empty()) {
    nlohmann::json doc = defaultScenarioJson();
    for (const auto& o : c.overrides) applyOverride(doc, o);
    scenario = parseScenario(doc, ".");
  } else {
    scenario = loadScenario((fs::path(COMPUTRON_SOURCE_DIR) / "scenarios" / c.scenario).string(), c.overrides);
  }
  scenario.outputs.dir = out.string();
  sim::runScenario(scenario, nullptr);
  std::ifstream in(out / "timeline.json");
  ASSERT_TRUE(in) << out;
  std::stringstream text;
  text << in.rdbuf();
  checkTimeline(nlohmann::json::parse(text.str()), c.label);
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(
    Scenarios, ShippedTimeline,
    ::testing::Values(TimelineCase{"default", "", {}},
                      TimelineCase{"default_multipath", "", {"policy.routing=\"multipath\""}},
                      TimelineCase{"random3_best_multipath", "random-3models-rates10-1-1-cv4.json", {"policy.name=\"best\""}},
                      TimelineCase{"coldstart_layer_pipelined", "coldstart-opt13b-h200.json", {}},
                      TimelineCase{"pipelined_start", "pipelined-start-opt13b-h200.json", {}},
                      TimelineCase{"swap_tp2pp2", "swap-opt13b-tp2pp2.json", {}}),
    [](const ::testing::TestParamInfo<TimelineCase>& case_info) { return std::string(case_info.param.label); });

// The spans a backend adds (the runtime's per-path and per-layer spans) land on named tracks of
// their own, in lanes when they overlap.
TEST(Timeline, BackendSpansGetNamedTracksAndLanes) {
  const fs::path out = fs::temp_directory_path() / ("computron-timeline-extra-" + std::to_string(::getpid()));
  fs::remove_all(out);
  Scenario scenario = parseScenario(defaultScenarioJson(), ".");
  scenario.outputs.dir = out.string();
  {
    RunRecorder recorder(scenario, "host");
    recorder.addTimelineSpan("gpu10 host via gpu10", "model 0 shard 0", 0, 100);
    recorder.addTimelineSpan("gpu2 host via gpu2", "model 0 shard 1", 50, 300);
    recorder.addTimelineSpan("gpu2 host via gpu2", "model 1 shard 1", 100, 200);  // overlaps the one above
    recorder.addTimelineSpan("gpu2 host via gpu2", "model 2 shard 1", 300, 400);  // after it: lane 1 again
    recorder.finish(1000);
  }
  std::ifstream in(out / "timeline.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json doc = nlohmann::json::parse(text.str());
  checkTimeline(doc, "backend spans");
  std::map<int, std::string> threads;  // of the runtime's process
  std::map<std::string, int> span_tid;
  const int pid = scenario.cluster.numGpus();
  for (const auto& e : doc["traceEvents"]) {
    if (e["pid"] != pid) continue;
    if (e["ph"] == "M" && e["name"] == "thread_name") threads[e["tid"].get<int>()] = e["args"]["name"];
    if (e["ph"] == "X") span_tid[e["name"].get<std::string>()] = e["tid"].get<int>();
  }
  ASSERT_EQ(threads.size(), 3u);
  // Tracks sorted by name with numbers as numbers: gpu2 before gpu10.
  EXPECT_EQ(threads.begin()->second, "gpu2 host via gpu2");
  EXPECT_EQ(threads.rbegin()->second, "gpu10 host via gpu10");
  EXPECT_EQ(span_tid["model 0 shard 1"], span_tid["model 2 shard 1"]);
  EXPECT_NE(span_tid["model 0 shard 1"], span_tid["model 1 shard 1"]);
  EXPECT_EQ(threads[span_tid["model 1 shard 1"]], "gpu2 host via gpu2 #2");
  fs::remove_all(out);
}

}  // namespace
}  // namespace computron
