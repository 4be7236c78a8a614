// Generated workloads (Poisson, Gamma, Zipf skew), token distributions, the closed-loop
// alternating source, the replayable CSV writer and workload JSON validation.
#include "common/workload.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace computron {
namespace {

const std::vector<std::string> kWorkloadModels = {"a", "b", "c"};

std::unique_ptr<RequestSource> build(const std::string& json_text,
                                     const std::vector<std::string>& models = kWorkloadModels, std::uint64_t seed = 42,
                                     Nanos duration = 0, const std::string& base_dir = "") {
  const nlohmann::json json = nlohmann::json::parse(json_text);
  return makeWorkload(JsonReader(json, "$.workload"), models, seed, duration, base_dir);
}

std::string errorOf(const std::string& json_text, const std::vector<std::string>& models = kWorkloadModels) {
  try {
    build(json_text, models);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<Request> take(RequestSource& source, std::size_t limit = SIZE_MAX) {
  std::vector<Request> requests;
  while (requests.size() < limit) {
    auto request = source.next();
    if (!request) break;
    requests.push_back(*request);
  }
  return requests;
}

TokenDist tokenDist(const std::string& json_text) {
  const nlohmann::json json = nlohmann::json::parse(json_text);
  return TokenDist::fromJson(JsonReader(json, "$.tokens"));
}

// ------------------------------------------------------------------------------------------ Rng

TEST(Rng, SameSeedSameSequenceAndDerivedStreamsDiffer) {
  Rng a(7), b(7), c(8);
  for (int i = 0; i < 100; ++i) {
    const std::uint64_t x = a.nextU64();
    EXPECT_EQ(x, b.nextU64());
    EXPECT_NE(x, c.nextU64());
  }
  EXPECT_EQ(Rng::derive(7, 0), Rng::derive(7, 0));
  EXPECT_NE(Rng::derive(7, 0), Rng::derive(7, 1));
  EXPECT_NE(Rng::derive(7, 0), Rng::derive(8, 0));
}

TEST(Rng, UniformStaysInsideItsBounds) {
  Rng rng(1);
  bool saw_lo = false, saw_hi = false;
  for (int i = 0; i < 10000; ++i) {
    const double u = rng.uniform01();
    ASSERT_GT(u, 0.0);
    ASSERT_LT(u, 1.0);
    const std::int64_t k = rng.uniformInt(-2, 3);
    ASSERT_GE(k, -2);
    ASSERT_LE(k, 3);
    saw_lo |= k == -2;
    saw_hi |= k == 3;
  }
  EXPECT_TRUE(saw_lo && saw_hi);
  EXPECT_EQ(rng.uniformInt(5, 5), 5);
}

TEST(Rng, NormalAndGammaMoments) {
  Rng rng(3);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double x = rng.normal();
    sum += x;
    sum_sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.01);

  for (double shape : {0.3, 2.5}) {
    double g_sum = 0;
    for (int i = 0; i < n; ++i) g_sum += rng.gamma(shape, 2.0);
    EXPECT_NEAR(g_sum / n, shape * 2.0, 0.02 * shape * 2.0) << "shape " << shape;
  }
}

// --------------------------------------------------------------------------------- TokenDist

TEST(TokenDist, ParsesEachFormAndWritesItBack) {
  Rng rng(5);
  EXPECT_EQ(tokenDist("128").sample(rng), 128);
  EXPECT_EQ(tokenDist(R"({"dist":"fixed","value":9})").sample(rng), 9);
  for (const char* text : {R"({"dist":"fixed","value":9})", R"({"dist":"uniform","min":16,"max":512})",
                           R"({"dist":"lognormal","mean":200.5,"cv":0.5,"min":2,"max":4096})"}) {
    const nlohmann::json expected = nlohmann::json::parse(text);
    EXPECT_EQ(tokenDist(text).toJson(), expected);
  }
  EXPECT_EQ(tokenDist("128").toJson(), nlohmann::json::parse(R"({"dist":"fixed","value":128})"));
}

TEST(TokenDist, UniformCoversItsRange) {
  const TokenDist dist = tokenDist(R"({"dist":"uniform","min":3,"max":6})");
  Rng rng(11);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 4000; ++i) {
    const int v = dist.sample(rng);
    ASSERT_GE(v, 3);
    ASSERT_LE(v, 6);
    ++counts[v];
  }
  for (int v = 3; v <= 6; ++v) EXPECT_NEAR(counts[v], 1000, 100) << v;
}

TEST(TokenDist, LognormalHasItsMeanAndIsClipped) {
  Rng rng(13);
  const TokenDist dist = tokenDist(R"({"dist":"lognormal","mean":200,"cv":0.5})");
  const int n = 100000;
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += dist.sample(rng);
  EXPECT_NEAR(sum / n, 200.0, 4.0);

  const TokenDist clipped = tokenDist(R"({"dist":"lognormal","mean":200,"cv":2,"min":150,"max":250})");
  bool saw_min = false, saw_max = false;
  for (int i = 0; i < 1000; ++i) {
    const int v = clipped.sample(rng);
    ASSERT_GE(v, 150);
    ASSERT_LE(v, 250);
    saw_min |= v == 150;
    saw_max |= v == 250;
  }
  EXPECT_TRUE(saw_min && saw_max);
}

// ------------------------------------------------------------------------- Generated streams

struct GapStats {
  double mean_s;
  double cv;
};

GapStats gapStats(const std::vector<Request>& requests) {
  double sum = 0, sum_sq = 0;
  const double n = static_cast<double>(requests.size() - 1);
  for (std::size_t i = 1; i < requests.size(); ++i) {
    const double gap = toSeconds(requests[i].arrival - requests[i - 1].arrival);
    sum += gap;
    sum_sq += gap * gap;
  }
  const double mean = sum / n;
  return {mean, std::sqrt(sum_sq / n - mean * mean) / mean};
}

class GammaArrivals : public ::testing::TestWithParam<double> {};

TEST_P(GammaArrivals, MeanAndCvOfGapsWithinTwoPercent) {
  const double cv = GetParam();
  auto source = build(R"({"type":"gamma","rate":1000,"cv":)" + std::to_string(cv) + "}", {"m"}, 2023);
  const auto requests = take(*source, 200001);
  ASSERT_EQ(requests.size(), 200001u);
  const GapStats stats = gapStats(requests);
  EXPECT_NEAR(stats.mean_s, 1e-3, 0.02 * 1e-3);
  EXPECT_NEAR(stats.cv, cv, 0.02 * cv);
}

INSTANTIATE_TEST_SUITE_P(SeedPaperCvs, GammaArrivals, ::testing::Values(0.25, 1.0, 4.0));

TEST(GeneratedWorkload, GammaWithCvOneIsThePoissonStream) {
  auto poisson = build(R"({"type":"poisson","rate":30})");
  auto gamma = build(R"({"type":"gamma","rate":30,"cv":1})");
  EXPECT_EQ(take(*poisson, 1000), take(*gamma, 1000));
}

TEST(GeneratedWorkload, ZipfSharesSplitTheTotalRate) {
  const auto shares = zipfShares(3, 1.0);
  EXPECT_DOUBLE_EQ(shares[0], 6.0 / 11);
  EXPECT_DOUBLE_EQ(shares[1], 3.0 / 11);
  EXPECT_DOUBLE_EQ(shares[2], 2.0 / 11);
  for (double share : zipfShares(4, 0.0)) EXPECT_DOUBLE_EQ(share, 0.25);

  auto source = build(R"({"type":"poisson","rate":300,"zipf_alpha":1})", kWorkloadModels, 42, 200 * kNanosPerSecond);
  std::vector<double> counts(3, 0);
  for (const Request& r : take(*source)) ++counts[r.model];
  for (int m = 0; m < 3; ++m) EXPECT_NEAR(counts[m] / (300.0 * 200 * shares[m]), 1.0, 0.02) << "model " << m;
}

TEST(GeneratedWorkload, ExplicitRatesPerModel) {
  auto source = build(R"({"type":"gamma","rates":[10,1,1],"cv":4})", kWorkloadModels, 42, 2000 * kNanosPerSecond);
  std::vector<double> counts(3, 0);
  for (const Request& r : take(*source)) ++counts[r.model];
  EXPECT_NEAR(counts[0] / 20000, 1.0, 0.1);
  EXPECT_NEAR(counts[1] / 2000, 1.0, 0.2);
  EXPECT_NEAR(counts[2] / 2000, 1.0, 0.2);
}

TEST(GeneratedWorkload, MergedInTimeThenModelOrderWithConsecutiveIds) {
  auto source = build(R"({"type":"gamma","rate":900,"zipf_alpha":0.5,"cv":4,
                          "prompt_tokens":{"dist":"uniform","min":1,"max":9}})");
  const auto requests = take(*source, 20000);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(requests[i].id, static_cast<RequestId>(i));
    if (i > 0) {
      const Request& before = requests[i - 1];
      ASSERT_TRUE(before.arrival < requests[i].arrival ||
                  (before.arrival == requests[i].arrival && before.model <= requests[i].model));
    }
  }
}

TEST(GeneratedWorkload, StopsAtDuration) {
  auto source = build(R"({"type":"poisson","rate":100})", kWorkloadModels, 42, 10 * kNanosPerSecond);
  const auto requests = take(*source);
  EXPECT_TRUE(source->exhausted());
  EXPECT_FALSE(source->next());
  EXPECT_NEAR(static_cast<double>(requests.size()), 1000, 100);
  for (const Request& r : requests) EXPECT_LT(r.arrival, 10 * kNanosPerSecond);
}

TEST(GeneratedWorkload, IsPulledLazily) {
  // A trillion requests: only possible if nothing is generated ahead of the pull.
  auto source = build(R"({"type":"poisson","rate":1e6})", kWorkloadModels, 42, 1'000'000 * kNanosPerSecond);
  EXPECT_EQ(take(*source, 10).size(), 10u);
  EXPECT_FALSE(source->exhausted());
}

TEST(GeneratedWorkload, SameSeedSameStreamDifferentSeedDifferentStream) {
  const std::string json = R"({"type":"gamma","rates":[5,2,1],"cv":2,
                               "prompt_tokens":{"dist":"lognormal","mean":300,"cv":1},
                               "output_tokens":{"dist":"uniform","min":1,"max":64}})";
  auto first = build(json, kWorkloadModels, 99);
  auto again = build(json, kWorkloadModels, 99);
  auto other = build(json, kWorkloadModels, 100);
  const auto a = take(*first, 2000);
  EXPECT_EQ(a, take(*again, 2000));
  EXPECT_NE(a, take(*other, 2000));
}

TEST(GeneratedWorkload, StreamIsPinnedAcrossPlatforms) {
  // Golden values: a change here means saved experiments no longer reproduce.
  auto source =
      build(R"({"type":"gamma","rates":[2,1],"cv":0.5,"prompt_tokens":{"dist":"uniform","min":1,"max":1000}})",
            {"x", "y"}, 1);
  const auto requests = take(*source, 4);
  std::ostringstream text;
  for (const Request& r : requests) text << r.id << ',' << r.model << ',' << r.arrival << ',' << r.prompt_tokens << ';';
  EXPECT_EQ(text.str(), "0,0,351042550,995;1,0,979137942,528;2,0,1213654114,413;3,0,1806336536,249;");
}

// ------------------------------------------------------------------------------- Alternating

TEST(AlternatingWorkload, IssuesEachRequestWhenThePreviousFinishes) {
  auto source =
      build(R"({"type":"alternating","requests":3,"think_time_ms":2,"prompt_tokens":5,"output_tokens":7})", {"a", "b"});
  auto first = source->next();
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, (Request{0, 0, 0, 5, 7}));
  EXPECT_FALSE(source->next());  // waiting for the first to finish
  EXPECT_FALSE(source->exhausted());

  source->onRequestDone(Request{17, 1, 0, 5, 7}, 3 * kNanosPerMilli);  // not the one in flight
  EXPECT_FALSE(source->next());

  source->onRequestDone(*first, 10 * kNanosPerMilli);
  auto second = source->next();
  ASSERT_TRUE(second);
  EXPECT_EQ(*second, (Request{1, 1, 12 * kNanosPerMilli, 5, 7}));
  EXPECT_FALSE(source->next());

  source->onRequestDone(*second, 20 * kNanosPerMilli);
  auto third = source->next();
  ASSERT_TRUE(third);
  EXPECT_EQ(*third, (Request{2, 0, 22 * kNanosPerMilli, 5, 7}));
  EXPECT_TRUE(source->exhausted());  // the last is in flight; nothing more will come
  source->onRequestDone(*third, 30 * kNanosPerMilli);
  EXPECT_FALSE(source->next());
  EXPECT_TRUE(source->exhausted());
}

TEST(AlternatingWorkload, StopsAtDuration) {
  auto source = build(R"({"type":"alternating","requests":10})", {"a", "b"}, 42, 15 * kNanosPerMilli);
  auto first = source->next();
  source->onRequestDone(*first, 10 * kNanosPerMilli);
  auto second = source->next();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->arrival, 10 * kNanosPerMilli);  // think time defaults to 0
  source->onRequestDone(*second, 15 * kNanosPerMilli);
  EXPECT_FALSE(source->next());
  EXPECT_TRUE(source->exhausted());
}

TEST(AlternatingWorkload, CannotBeSavedAsATrace) {
  auto source = build(R"({"type":"alternating","requests":4})", {"a", "b"});
  std::ostringstream out;
  EXPECT_THROW(writeWorkloadCsv(*source, {"a", "b"}, out), ConfigError);
}

// -------------------------------------------------------------------------- Replayable CSV

TEST(WorkloadCsv, WriteThenReplayGivesIdenticalRequests) {
  const std::string json = R"({"type":"gamma","rates":[120,60,20],"cv":4,
                               "prompt_tokens":{"dist":"lognormal","mean":500,"cv":1.5},
                               "output_tokens":{"dist":"uniform","min":1,"max":300}})";
  const Nanos duration = 10 * kNanosPerSecond;
  auto source = build(json, kWorkloadModels, 5, duration);
  std::ostringstream csv;
  const std::int64_t rows = writeWorkloadCsv(*source, kWorkloadModels, csv);
  EXPECT_GT(rows, 1500);
  EXPECT_EQ(csv.str().substr(0, csv.str().find('\n')), "id,model,arrival_ns,prompt_tokens,output_tokens");

  const std::string path = ::testing::TempDir() + "workload_round_trip_" + std::to_string(::getpid()) + ".csv";
  std::ofstream(path) << csv.str();
  auto replay = build(R"({"type":"trace","format":"computron","path":")" + path + R"("})");
  const auto replayed = take(*replay);
  std::filesystem::remove(path);

  auto original = build(json, kWorkloadModels, 5, duration);
  const auto expected = take(*original);
  ASSERT_EQ(static_cast<std::int64_t>(expected.size()), rows);
  EXPECT_EQ(replayed, expected);
}

TEST(WorkloadCsv, RejectsModelNamesThatBreakTheFormat) {
  auto source = build(R"({"type":"poisson","rate":1})", {"a,b"}, 1, kNanosPerSecond);
  std::ostringstream out;
  EXPECT_THROW(writeWorkloadCsv(*source, {"a,b"}, out), ConfigError);
}

// ---------------------------------------------------------------------------- JSON errors

struct BadWorkload {
  const char* json;
  const char* message;
};

class BadWorkloadJson : public ::testing::TestWithParam<BadWorkload> {};

TEST_P(BadWorkloadJson, NamesThePath) { EXPECT_EQ(errorOf(GetParam().json), GetParam().message); }

INSTANTIATE_TEST_SUITE_P(
    Messages, BadWorkloadJson,
    ::testing::Values(
        BadWorkload{R"([1])", "$.workload: expected an object, got array"},
        BadWorkload{R"({"rate":1})", "$.workload.type: required key is missing"},
        BadWorkload{R"({"type":"weibull"})",
                    "$.workload.type: unknown workload type 'weibull' (allowed: poisson, gamma, trace, alternating)"},
        BadWorkload{R"({"type":"poisson"})",
                    "$.workload: needs \"rate\" (total requests/s) or \"rates\" (requests/s per model)"},
        BadWorkload{R"({"type":"poisson","rate":3,"rates":[1,1,1]})",
                    "$.workload: give either \"rate\" (a total split by zipf_alpha) or \"rates\" (one per model), not "
                    "both"},
        BadWorkload{R"({"type":"poisson","rates":[1,2]})", "$.workload.rates: expected 3 rates (one per model), got 2"},
        BadWorkload{R"({"type":"poisson","rates":[1,2,0]})", "$.workload.rates[2]: must be greater than 0"},
        BadWorkload{R"({"type":"gamma","rate":-1})", "$.workload.rate: must be greater than 0"},
        BadWorkload{R"({"type":"poisson","rate":"fast"})", "$.workload.rate: expected a number, got string"},
        BadWorkload{
            R"({"type":"poisson","rate":3,"cv":2})",
            "$.workload.cv: unknown key (allowed: type, rate, rates, zipf_alpha, prompt_tokens, output_tokens)"},
        BadWorkload{R"({"type":"gamma","rate":3,"cv":0})", "$.workload.cv: must be greater than 0"},
        BadWorkload{R"({"type":"poisson","rate":3,"zipf_alpha":-1})", "$.workload.zipf_alpha: must not be negative"},
        BadWorkload{R"({"type":"poisson","rates":[1,1,1],"zipf_alpha":1})",
                    "$.workload.zipf_alpha: only used with \"rate\"; \"rates\" are per model"},
        BadWorkload{R"({"type":"poisson","rate":1,"prompt_tokens":0})", "$.workload.prompt_tokens: must be at least 1"},
        BadWorkload{R"({"type":"poisson","rate":1,"prompt_tokens":"many"})",
                    "$.workload.prompt_tokens: expected a token count or an object such as "
                    "{\"dist\":\"uniform\",\"min\":16,\"max\":512}"},
        BadWorkload{R"({"type":"poisson","rate":1,"prompt_tokens":{"dist":"zipf"}})",
                    "$.workload.prompt_tokens.dist: unknown distribution 'zipf' (allowed: fixed, uniform, lognormal)"},
        BadWorkload{R"({"type":"poisson","rate":1,"prompt_tokens":{"dist":"fixed","value":3,"mean":2}})",
                    "$.workload.prompt_tokens.mean: unknown key (allowed: dist, value)"},
        BadWorkload{R"({"type":"poisson","rate":1,"output_tokens":{"dist":"uniform","min":10}})",
                    "$.workload.output_tokens.max: required key is missing"},
        BadWorkload{R"({"type":"poisson","rate":1,"output_tokens":{"dist":"uniform","min":10,"max":5}})",
                    "$.workload.output_tokens.max: must be at least min (10)"},
        BadWorkload{R"({"type":"poisson","rate":1,"output_tokens":{"dist":"lognormal","mean":0,"cv":1}})",
                    "$.workload.output_tokens.mean: must be greater than 0"},
        BadWorkload{R"({"type":"trace","path":"x.csv"})", "$.workload.format: required key is missing"},
        BadWorkload{R"({"type":"trace","format":"parquet","path":"x"})",
                    "$.workload.format: unknown trace format 'parquet' (allowed: azure, mooncake, computron)"},
        BadWorkload{R"({"type":"trace","format":"azure"})", "$.workload.path: required key is missing"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","assign":"random"})",
                    "$.workload.assign: unknown assignment 'random' (allowed: zipf, round_robin, split)"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","assign":"split"})",
                    "$.workload.split: required key is missing"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","assign":"split","split":[0.5,0.5]})",
                    "$.workload.split: expected 3 fractions (one per model), got 2"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","assign":"split","split":[0.5,0.25,0.125]})",
                    "$.workload.split: fractions must add up to 1, got 0.875"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","assign":"split","split":[0.5,-0.25,0.75]})",
                    "$.workload.split[1]: must not be negative"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","zipf_alpha":1})",
                    "$.workload.zipf_alpha: only used with \"assign\":\"zipf\""},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","split":[1,0,0]})",
                    "$.workload.split: only used with \"assign\":\"split\""},
        BadWorkload{R"({"type":"trace","format":"computron","path":"x.csv","assign":"zipf"})",
                    "$.workload.assign: not used with \"format\":\"computron\" (rows name their model)"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","time_scale":0})",
                    "$.workload.time_scale: must be greater than 0"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","max_requests":-1})",
                    "$.workload.max_requests: must be between 0 and 1000000000, got -1"},
        BadWorkload{R"({"type":"trace","format":"azure","path":"x.csv","rate_scale":2})",
                    "$.workload.rate_scale: unknown key (allowed: type, format, path, assign, zipf_alpha, split, "
                    "time_scale, start_s, max_requests, prompt_tokens, output_tokens)"},
        BadWorkload{R"({"type":"alternating","requests":0})", "$.workload.requests: must be between 1 and 1000000000, got 0"},
        BadWorkload{R"({"type":"alternating","requests":2,"think_time_ms":-1})",
                    "$.workload.think_time_ms: must not be negative"},
        BadWorkload{R"({"type":"alternating","requests":2,"rate":1})",
                    "$.workload.rate: unknown key (allowed: type, requests, think_time_ms, prompt_tokens, "
                    "output_tokens)"}));

TEST(BadWorkloadJson, NeedsModels) {
  EXPECT_EQ(errorOf(R"({"type":"poisson","rate":1})", {}),
            "$.workload: the scenario has no models to send requests to");
}

}  // namespace
}  // namespace computron
