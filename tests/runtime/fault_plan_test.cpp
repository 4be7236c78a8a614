// FaultPlan: which occurrence each injected fault hits, the same decisions for every device.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "runtime/cli/faults.h"
#include "runtime/fault_plan.h"
#include "tests/support/config_error.h"

namespace computron::runtime {
namespace {

FaultSpec fault(FaultKind kind, int target, std::int64_t nth, const std::string& label, Nanos stall = 0) {
  FaultSpec f;
  f.kind = kind;
  f.target = target;
  f.nth = nth;
  f.stall = stall;
  f.label = label;
  return f;
}

PathJob path(OpId op, ModelId model, int shard, int path_index) {
  PathJob job;
  job.op = op;
  job.model = model;
  job.shard = shard;
  job.path = path_index;
  return job;
}

TEST(FaultPlan, NthLoadOfAModelFailsCountedOncePerLoad) {
  FaultPlan plan({fault(FaultKind::kFailLoad, 1, 2, "fail-load=b@2")});
  // Load 1 of model 1: its other paths and shards do not count.
  EXPECT_EQ(plan.failPath(path(10, 1, 0, 0)), std::nullopt);
  EXPECT_EQ(plan.failPath(path(10, 1, 0, 1)), std::nullopt);
  EXPECT_EQ(plan.failPath(path(11, 1, 1, 0)), std::nullopt);
  // Another model's loads do not count either.
  EXPECT_EQ(plan.failPath(path(12, 0, 0, 0)), std::nullopt);
  EXPECT_EQ(plan.failPath(path(13, 1, 0, 0)), std::optional<std::string>("injected fault (fail-load=b@2)"));
  EXPECT_EQ(plan.failPath(path(14, 1, 0, 0)), std::nullopt);
  EXPECT_FALSE(plan.takeCorruption(13));
}

TEST(FaultPlan, EveryCorruptLoadIsTakenOnceByItsVerification) {
  FaultPlan plan({fault(FaultKind::kCorruptLoad, 0, 0, "corrupt-load=a")});
  EXPECT_EQ(plan.failPath(path(1, 0, 0, 0)), std::nullopt);
  EXPECT_EQ(plan.failPath(path(2, 0, 1, 0)), std::nullopt);  // shard 1: the load counts at shard 0
  EXPECT_EQ(plan.failPath(path(3, 0, 0, 0)), std::nullopt);
  EXPECT_TRUE(plan.takeCorruption(1));
  EXPECT_FALSE(plan.takeCorruption(1));
  EXPECT_FALSE(plan.takeCorruption(2));
  EXPECT_TRUE(plan.takeCorruption(3));
}

TEST(FaultPlan, AFailedLoadIsNotAlsoCorrupt) {
  FaultPlan plan({fault(FaultKind::kFailLoad, 0, 1, "fail-load=a@1"), fault(FaultKind::kCorruptLoad, 0, 0, "corrupt-load=a")});
  EXPECT_EQ(plan.failPath(path(1, 0, 0, 0)), std::optional<std::string>("injected fault (fail-load=a@1)"));
  EXPECT_FALSE(plan.takeCorruption(1));
  EXPECT_EQ(plan.failPath(path(2, 0, 0, 0)), std::nullopt);
  EXPECT_TRUE(plan.takeCorruption(2));
}

TEST(FaultPlan, BatchesCountAtPartZeroAndStallsPerGpu) {
  FaultPlan plan({fault(FaultKind::kFailBatch, 2, 2, "fail-batch=c@2"),
                  fault(FaultKind::kStall, 1, 3, "stall=1:50@3", 50 * kNanosPerMilli)});
  EXPECT_EQ(plan.failBatch(2, 0), std::nullopt);
  EXPECT_EQ(plan.failBatch(2, 1), std::nullopt);
  EXPECT_EQ(plan.failBatch(2, 0), std::optional<std::string>("injected fault (fail-batch=c@2)"));
  EXPECT_EQ(plan.failBatch(2, 1), std::nullopt);  // only part 0 reports the injected failure
  EXPECT_EQ(plan.failBatch(2, 0), std::nullopt);
  EXPECT_EQ(plan.stallBefore(0), 0);
  EXPECT_EQ(plan.stallBefore(1), 0);
  EXPECT_EQ(plan.stallBefore(1), 0);
  EXPECT_EQ(plan.stallBefore(1), 50 * kNanosPerMilli);
  EXPECT_EQ(plan.stallBefore(1), 0);
}

TEST(FaultPlan, ConcurrentWorkersTriggerEachOccurrenceOnce) {
  FaultPlan plan({fault(FaultKind::kFailBatch, 0, 500, "fail-batch=a@500")});
  std::atomic<int> hits{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t)
    workers.emplace_back([&] {
      for (int i = 0; i < 250; ++i) hits += plan.failBatch(0, 0).has_value();
    });
  for (auto& w : workers) w.join();
  EXPECT_EQ(hits.load(), 1);
}

TEST(Injections, SpecsBecomeFaultsAndBadOnesNameTheSpec) {
  const auto faults = parseInjections({"fail-load=b@2", "corrupt-load=a", "fail-batch=c", "stall=3:20"}, {"a", "b", "c"}, 4);
  ASSERT_EQ(faults.size(), 4u);
  EXPECT_EQ(faults[0].kind, FaultKind::kFailLoad);
  EXPECT_EQ(faults[0].target, 1);
  EXPECT_EQ(faults[0].nth, 2);
  EXPECT_EQ(faults[1].kind, FaultKind::kCorruptLoad);
  EXPECT_EQ(faults[1].nth, 0);
  EXPECT_EQ(faults[2].target, 2);
  EXPECT_EQ(faults[3].kind, FaultKind::kStall);
  EXPECT_EQ(faults[3].target, 3);
  EXPECT_EQ(faults[3].stall, 20 * kNanosPerMilli);
  EXPECT_EQ(faults[3].nth, 1);
  EXPECT_EQ(faults[3].label, "stall=3:20");
  EXPECT_NE(fakes::configErrorOf([] { parseInjections({"melt=a"}, {"a"}, 1); }).find("--inject melt=a: unknown fault 'melt'"), std::string::npos);
  EXPECT_NE(fakes::configErrorOf([] { parseInjections({"stall=0"}, {"a"}, 1); }).find("--inject stall=0: malformed"), std::string::npos);
  EXPECT_NE(fakes::configErrorOf([] { parseInjections({"stall=0:0"}, {"a"}, 1); }).find("--inject stall=0:0: MS must be an integer from 1 to 3600000"), std::string::npos);
  // The scenario's label form is the same.
  EXPECT_EQ(faultLabel(faults[0], {"a", "b", "c"}), "fail-load=b@2");
  EXPECT_EQ(faultLabel(faults[3], {"a", "b", "c"}), "stall=3:20@1");
}

}  // namespace
}  // namespace computron::runtime
