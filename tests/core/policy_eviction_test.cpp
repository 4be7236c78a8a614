// Eviction policies on fixed access strings, computed by hand, and a property test: the offline
// oracle (Belady) never misses more than an online policy. Requests come one at a time, each
// served before the next arrives, so this is the classic paging problem on a count cap.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/core/engine.h"
#include "common/core/oracle.h"
#include "common/core/policy.h"
#include "common/workload.h"
#include "tests/support/engine_fakes.h"

namespace computron {
namespace {

using fakes::ManualClock;
using fakes::RecordingBackend;

constexpr Nanos kStep = 10 * kNanosPerSecond;

struct PagingResult {
  std::string evictions;  // per access: the model evicted ('-' for none)
  std::int64_t misses = 0;
};

// Serves `accesses` (letters 'A'..) one by one at kStep apart on one GPU with room for `cap`
// models, delivering every completion by hand.
PagingResult runPaging(const std::string& accesses, int num_models, int cap, const std::string& eviction) {
  EngineConfig config;
  for (int m = 0; m < num_models; ++m) {
    ModelDeployment d;
    d.name = std::string(1, static_cast<char>('A' + m));
    d.spec = modelPreset("opt-125m");
    d.gpus = {0};
    config.models.push_back(d);
  }
  config.gpu_weight_budget = {16 * kGiB};
  config.gpu_link_bandwidth = {1e9};
  config.policy.max_loaded_models = cap;
  config.policy.eviction = eviction;
  config.policy.lfu_half_life = 0;  // plain counts, so the tables can be checked by hand
  std::vector<std::vector<Nanos>> arrivals(static_cast<std::size_t>(num_models));
  for (std::size_t i = 0; i < accesses.size(); ++i)
    arrivals[static_cast<std::size_t>(accesses[i] - 'A')].push_back(static_cast<Nanos>(i + 1) * kStep);
  config.future = std::make_shared<const ArrivalOracle>(arrivals);

  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  PagingResult result;
  std::size_t loads_done = 0, evicts_done = 0;
  for (std::size_t i = 0; i < accesses.size(); ++i) {
    clock.t = static_cast<Nanos>(i + 1) * kStep;
    std::size_t evicts_before = backend.evicts.size();
    Request r;
    r.id = static_cast<RequestId>(i);
    r.model = accesses[i] - 'A';
    r.arrival = clock.t;
    std::size_t runs_before = backend.runs.size();
    engine.onArrival(r);
    while (backend.runs.size() == runs_before) {
      if (evicts_done < backend.evicts.size()) {
        engine.onEvictDone(backend.evicts[evicts_done++].op);
      } else if (loads_done < backend.loads.size()) {
        engine.onLoadDone(backend.loads[loads_done++].op);
      } else {
        ADD_FAILURE() << "access " << i << " never ran";
        return result;
      }
      engine.checkInvariants();
    }
    BatchResult done;
    done.batch = backend.runs.back().batch;
    done.start = done.first_token = clock.t;
    done.finish.assign(backend.runs.back().requests.size(), clock.t);
    engine.onBatchDone(done);
    if (backend.evicts.size() > evicts_before) {
      EXPECT_EQ(backend.evicts.size(), evicts_before + 1);
      result.evictions += static_cast<char>('A' + backend.evicts[evicts_before].model);
    } else {
      result.evictions += '-';
    }
  }
  for (int m = 0; m < num_models; ++m) result.misses += engine.model(m).loads;
  return result;
}

// Access string A B C A A D B E A C D with room for three models. Worked by hand:
//
// | step | access | LRU evicts (last use)  | LFU evicts (count)   | GDSF evicts (H; L)      | Belady evicts (next use) |
// |  6   |   D    | B (A5 B2 C3)           | B (A3 B1 C1; B older)| B (A3 B1 C1; L=1)       | C (A9 B7 C10)            |
// |  7   |   B    | C (A5 C3 D6)           | C (A3 C1 D1; C older)| C (A3 C1 D2; L=1)       | hit                      |
// |  8   |   E    | A (A5 D6 B7)           | D (A3 D1 B2)         | D (A3 D2 B2; D older)   | B (A9 B never D11)       |
// |  9   |   A    | D (D6 B7 E8)           | hit                  | hit (H_A = 2 + 4 = 6)   | hit                      |
// | 10   |   C    | B (B7 E8 A9)           | E (A4 B2 E1)         | B (B2 E3 A6; L=2)       | E (A, E never; E older)  |
// | 11   |   D    | E (E8 A9 C10)          | B (A4 B2 C2; B older)| E (E3 A6 C3; E older)   | hit                      |
//
// GDSF: H = L + frequency since load x reload cost / size; one GPU at 1 GB/s makes cost/size 1
// for every model, so H = L + hits and L rises to each victim's H.
TEST(PolicyEviction, HandComputedAccessString) {
  const std::string accesses = "ABCAADBEACD";
  struct Case {
    const char* policy;
    const char* evictions;
    std::int64_t misses;
  };
  const Case cases[] = {
      {"lru", "-----BCADBE", 9},
      {"lfu", "-----BCD-EB", 8},
      {"gdsf", "-----BCD-BE", 8},
      {"belady", "-----C-B-E-", 6},
  };
  for (const auto& c : cases) {
    PagingResult r = runPaging(accesses, 5, 3, c.policy);
    EXPECT_EQ(r.evictions, c.evictions) << c.policy;
    EXPECT_EQ(r.misses, c.misses) << c.policy;
  }
}

// LFU's memory keeps a once-hot model too long where LRU adapts: A A A B C B C B C, room for two.
//
// | step | access | LRU evicts (last use) | LFU evicts (count)         | Belady evicts (next use) |
// |  5   |   C    | A (A3 B4)             | B (A3 B1)                  | A (A never, B6)          |
// |  6   |   B    | hit                   | C (A3 C1)                  | hit                      |
// |  7   |   C    | hit                   | B (A3 B2)                  | hit                      |
// |  8   |   B    | hit                   | C (A3 C2)                  | hit                      |
// |  9   |   C    | hit                   | A (A3 B3; A used longer ago)| hit                     |
TEST(PolicyEviction, LfuHoldsAnOldFavourite) {
  const std::string accesses = "AAABCBCBC";
  EXPECT_EQ(runPaging(accesses, 3, 2, "lru").evictions, "----A----");
  EXPECT_EQ(runPaging(accesses, 3, 2, "lru").misses, 3);
  EXPECT_EQ(runPaging(accesses, 3, 2, "lfu").evictions, "----BCBCA");
  EXPECT_EQ(runPaging(accesses, 3, 2, "lfu").misses, 7);
  EXPECT_EQ(runPaging(accesses, 3, 2, "belady").evictions, "----A----");
  EXPECT_EQ(runPaging(accesses, 3, 2, "belady").misses, 3);
}

// GDSF weighs reload cost per byte: a model split over two GPUs reloads twice as fast per byte
// as one on a single GPU, so at equal frequency GDSF evicts it first, where LRU evicts the older.
TEST(PolicyEviction, GdsfPrefersEvictingCheapReloads) {
  EngineConfig config;
  auto add = [&](const char* name, int tp, std::vector<GpuId> gpus) {
    ModelDeployment d;
    d.name = name;
    d.spec = modelPreset("opt-125m");
    d.tp = tp;
    d.gpus = std::move(gpus);
    config.models.push_back(d);
  };
  add("split", 2, {0, 1});  // H = L + hits x ~0.5
  add("whole", 1, {0});     // H = L + hits x 1
  add("new", 1, {1});
  config.gpu_weight_budget = {16 * kGiB, 16 * kGiB};
  config.gpu_link_bandwidth = {1e9, 1e9};
  config.policy.max_loaded_models = 2;
  for (const char* policy : {"lru", "gdsf"}) {
    config.policy.eviction = policy;
    RecordingBackend backend;
    ManualClock clock;
    Engine engine(config, backend, clock);
    std::size_t loads_done = 0, evicts_done = 0;
    // whole (t1), split (t2), then new (t3): LRU evicts whole, GDSF evicts split.
    ModelId order[] = {1, 0, 2};
    for (int i = 0; i < 3; ++i) {
      clock.t = (i + 1) * kStep;
      Request r;
      r.id = i;
      r.model = order[i];
      r.arrival = clock.t;
      std::size_t runs_before = backend.runs.size();
      engine.onArrival(r);
      while (backend.runs.size() == runs_before) {
        if (evicts_done < backend.evicts.size()) engine.onEvictDone(backend.evicts[evicts_done++].op);
        else engine.onLoadDone(backend.loads[loads_done++].op);
      }
      BatchResult done;
      done.batch = backend.runs.back().batch;
      done.start = done.first_token = clock.t;
      done.finish = {clock.t};
      engine.onBatchDone(done);
    }
    ASSERT_FALSE(backend.evicts.empty()) << policy;
    EXPECT_EQ(backend.evicts[0].model, std::string(policy) == "lru" ? 1 : 0) << policy;
    // Split over two links: about half the reload time (embeddings are replicated per shard).
    EXPECT_LT(engine.reloadSeconds(0), 0.55 * engine.reloadSeconds(1));
  }
}

TEST(PolicyEviction, OracleNeverMissesMoreThanAnOnlinePolicy) {
  Rng rng(42);
  for (int trial = 0; trial < 150; ++trial) {
    const int models = static_cast<int>(rng.uniformInt(3, 6));
    const int cap = static_cast<int>(rng.uniformInt(1, models - 1));
    const int length = static_cast<int>(rng.uniformInt(10, 60));
    // Skewed popularity: model m drawn with weight 1/(m+1)^alpha.
    std::vector<double> shares = zipfShares(static_cast<std::size_t>(models), rng.uniform01() * 2);
    std::string accesses;
    for (int i = 0; i < length; ++i) {
      double u = rng.uniform01(), acc = 0;
      int m = 0;
      for (; m < models - 1; ++m) {
        acc += shares[static_cast<std::size_t>(m)];
        if (u < acc) break;
      }
      accesses += static_cast<char>('A' + m);
    }
    std::int64_t oracle = runPaging(accesses, models, cap, "belady").misses;
    for (const char* online : {"lru", "lfu", "gdsf", "demand"}) {
      std::int64_t misses = runPaging(accesses, models, cap, online).misses;
      EXPECT_LE(oracle, misses) << online << " on " << accesses << " with room for " << cap;
    }
  }
}

TEST(PolicyEviction, BeladyWithoutAFutureIsRefused) {
  EngineConfig config;
  ModelDeployment d;
  d.name = "a";
  d.spec = modelPreset("opt-125m");
  d.gpus = {0};
  config.models = {d};
  config.gpu_weight_budget = {kGiB};
  config.policy.eviction = "belady";
  RecordingBackend backend;
  ManualClock clock;
  EXPECT_THROW(Engine(config, backend, clock), ConfigError);
}

TEST(PolicyEviction, OracleAnswersNextArrival) {
  ArrivalOracle oracle({{10, 20, 20, 40}, {}});
  EXPECT_EQ(oracle.nextArrival(0, 0), 10);
  EXPECT_EQ(oracle.nextArrival(0, 20), 20);
  EXPECT_EQ(oracle.nextArrival(0, 21), 40);
  EXPECT_EQ(oracle.nextArrival(0, 41), ArrivalOracle::kNever);
  EXPECT_EQ(oracle.nextArrival(1, 0), ArrivalOracle::kNever);
  EXPECT_EQ(oracle.arrivalsBetween(0, 15, 40), 2);
}

}  // namespace
}  // namespace computron
