// Trace replay: Azure CSV and Mooncake JSONL parsing with exact times, windows and time scaling,
// model assignment, the real traces in traces/, and broken trace files naming file:line.
#include <gtest/gtest.h>

#include "common/trace_readers.h"
#include "common/workload.h"

namespace computron {
namespace {

const std::string kFixtures = std::string(COMPUTRON_SOURCE_DIR) + "/tests/data/traces";
const std::vector<std::string> kThreeModels = {"a", "b", "c"};

std::vector<Request> replay(const std::string& json_text, const std::vector<std::string>& models = kThreeModels,
                            std::uint64_t seed = 42, Nanos duration = 0, const std::string& base_dir = kFixtures) {
  const nlohmann::json json = nlohmann::json::parse(json_text);
  auto source = makeWorkload(JsonReader(json, "$.workload"), models, seed, duration, base_dir);
  std::vector<Request> requests;
  while (auto request = source->next()) requests.push_back(*request);
  EXPECT_TRUE(source->exhausted());
  return requests;
}

std::vector<Request> replayReal(const std::string& json_text, std::uint64_t seed = 42) {
  return replay(json_text, kThreeModels, seed, 0, COMPUTRON_SOURCE_DIR);
}

std::vector<int> modelCounts(const std::vector<Request>& requests) {
  std::vector<int> counts(3, 0);
  for (const Request& r : requests) ++counts[r.model];
  return counts;
}

// --------------------------------------------------------------------------------- Parsing

TEST(CivilTime, ParsesExactlyAndRejectsImpossibleDates) {
  EXPECT_EQ(parseCivilTime("2023-11-16 18:17:03.9799600"), 1700158623979960000);
  EXPECT_EQ(parseCivilTime("1970-01-01 00:00:00"), 0);
  EXPECT_EQ(parseCivilTime("1970-01-01T00:00:00.000000001"), 1);
  EXPECT_EQ(*parseCivilTime("2024-03-01 00:00:00") - *parseCivilTime("2024-02-28 00:00:00"),
            2 * 86400 * kNanosPerSecond);
  EXPECT_FALSE(parseCivilTime("2023-02-29 00:00:00"));
  EXPECT_FALSE(parseCivilTime("2023-11-16 24:00:00"));
  EXPECT_FALSE(parseCivilTime("2023-11-16 18:17:03.1234567891"));  // more than 9 digits
  EXPECT_FALSE(parseCivilTime("2023-11-16 18:17:03."));
  EXPECT_FALSE(parseCivilTime("2023-11-16 18:17:03Z"));
  EXPECT_FALSE(parseCivilTime("16/11/2023 18:17:03"));
}

TEST(AzureTrace, OffsetsFromTheFirstRowExactTo100ns) {
  const auto requests = replay(R"({"type":"trace","format":"azure","path":"azure_small.csv"})");
  const std::vector<Request> expected = {
      {0, 0, 0, 100, 10},
      {1, 1, 100, 200, 20},
      {2, 2, 100, 300, 1},             // 0 generated tokens replays as 1; equal timestamps are in order
      {3, 0, 2'500'000'100, 400, 40},  // across midnight; a one-digit fraction
      {4, 1, 3'000'000'200, 500, 50},
  };
  EXPECT_EQ(requests, expected);
}

TEST(MooncakeTrace, TimestampsInMillisecondsAsGiven) {
  const auto records = readMooncakeTrace({kFixtures + "/mooncake_small.jsonl", "mooncake_small.jsonl"});
  ASSERT_EQ(records.size(), 4u);
  const Nanos times[] = {0, 0, 1'500'000'000, 2'500'500'000};
  const int prompts[] = {100, 200, 300, 400};
  const int outputs[] = {5, 6, 7, 8};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(records[i].time, times[i]) << i;
    EXPECT_EQ(records[i].prompt_tokens, prompts[i]) << i;
    EXPECT_EQ(records[i].output_tokens, outputs[i]) << i;
  }
}

// ------------------------------------------------------------------- Windows and scaling

TEST(TraceReplay, TimeScaleStretchesTheTrace) {
  const auto requests = replay(R"({"type":"trace","format":"azure","path":"azure_small.csv","time_scale":2.0})");
  ASSERT_EQ(requests.size(), 5u);
  EXPECT_EQ(requests[1].arrival, 200);
  EXPECT_EQ(requests[3].arrival, 5'000'000'200);
  EXPECT_EQ(requests[4].arrival, 6'000'000'400);
}

TEST(TraceReplay, StartMaxRequestsAndDurationWindows) {
  auto from_one_second = replay(R"({"type":"trace","format":"azure","path":"azure_small.csv","start_s":1})");
  ASSERT_EQ(from_one_second.size(), 2u);
  EXPECT_EQ(from_one_second[0], (Request{0, 0, 1'500'000'100, 400, 40}));
  EXPECT_EQ(from_one_second[1], (Request{1, 1, 2'000'000'200, 500, 50}));

  EXPECT_EQ(replay(R"({"type":"trace","format":"azure","path":"azure_small.csv","max_requests":2})").size(), 2u);
  // Rows at or after the duration are dropped: [0, 100 ns) keeps only the first.
  EXPECT_EQ(replay(R"({"type":"trace","format":"azure","path":"azure_small.csv"})", kThreeModels, 42, 100).size(), 1u);
}

TEST(TraceReplay, TokenDistributionsOverrideTheTrace) {
  const auto requests = replay(R"({"type":"trace","format":"mooncake","path":"mooncake_small.jsonl",
                                   "prompt_tokens":7,"output_tokens":{"dist":"uniform","min":1,"max":3}})");
  ASSERT_EQ(requests.size(), 4u);
  for (const Request& r : requests) {
    EXPECT_EQ(r.prompt_tokens, 7);
    EXPECT_GE(r.output_tokens, 1);
    EXPECT_LE(r.output_tokens, 3);
  }
}

// ------------------------------------------------------------------------ Model assignment

TEST(TraceAssignment, RoundRobinIsTheDefault) {
  const auto requests =
      replayReal(R"({"type":"trace","format":"azure","path":"traces/AzureLLMInferenceTrace_code.csv"})");
  for (const Request& r : requests) ASSERT_EQ(r.model, r.id % 3);
}

TEST(TraceAssignment, SplitFractions) {
  const auto requests = replayReal(R"({"type":"trace","format":"azure","path":"traces/AzureLLMInferenceTrace_conv.csv",
                                       "assign":"split","split":[0.5,0.25,0.25]})");
  const auto counts = modelCounts(requests);
  const double n = static_cast<double>(requests.size());
  EXPECT_NEAR(counts[0] / n, 0.5, 0.01);
  EXPECT_NEAR(counts[1] / n, 0.25, 0.01);
  EXPECT_NEAR(counts[2] / n, 0.25, 0.01);

  const auto only_b = replay(R"({"type":"trace","format":"azure","path":"azure_small.csv",
                                 "assign":"split","split":[0,1,0]})");
  for (const Request& r : only_b) EXPECT_EQ(r.model, 1);
}

TEST(TraceAssignment, SeededZipf) {
  const std::string json = R"({"type":"trace","format":"azure","path":"traces/AzureLLMInferenceTrace_conv.csv",
                               "assign":"zipf","zipf_alpha":1.0})";
  const auto requests = replayReal(json);
  const auto counts = modelCounts(requests);
  const auto shares = zipfShares(3, 1.0);
  const double n = static_cast<double>(requests.size());
  for (int m = 0; m < 3; ++m) EXPECT_NEAR(counts[m] / n, shares[m], 0.01) << "model " << m;

  EXPECT_EQ(replayReal(json), requests);
  EXPECT_NE(replayReal(json, 43), requests);
}

// ----------------------------------------------------------------------------- Real traces

TEST(RealTraces, ParseCompletely) {
  const auto code = replayReal(R"({"type":"trace","format":"azure","path":"traces/AzureLLMInferenceTrace_code.csv"})");
  ASSERT_EQ(code.size(), 8819u);
  EXPECT_EQ(code[0], (Request{0, 0, 0, 4808, 10}));
  EXPECT_EQ(code[1], (Request{1, 1, 52'000'000, 3180, 8}));  // 18:17:04.0319600 - 18:17:03.9799600

  const auto conv = replayReal(R"({"type":"trace","format":"azure","path":"traces/AzureLLMInferenceTrace_conv.csv"})");
  ASSERT_EQ(conv.size(), 19366u);
  EXPECT_EQ(conv.back().arrival, 3'501'721'937'000);
  EXPECT_EQ(conv.back().prompt_tokens, 197);
  EXPECT_EQ(conv.back().output_tokens, 183);

  const auto mooncake =
      replayReal(R"({"type":"trace","format":"mooncake","path":"traces/mooncake_synthetic_trace.jsonl"})");
  ASSERT_EQ(mooncake.size(), 3993u);
  EXPECT_EQ(mooncake[0].prompt_tokens, 40160);
  EXPECT_EQ(mooncake.back().arrival, 1'022'025 * kNanosPerMilli);
}

// ----------------------------------------------------------------------------- Broken files

struct BrokenTrace {
  const char* format;
  const char* file;
  const char* message;
};

class BrokenTraces : public ::testing::TestWithParam<BrokenTrace> {};

TEST_P(BrokenTraces, NameFileAndLine) {
  const BrokenTrace& broken = GetParam();
  const std::string json =
      std::string(R"({"type":"trace","format":")") + broken.format + R"(","path":")" + broken.file + R"("})";
  try {
    replay(json);
    FAIL() << "no error for " << broken.file;
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), broken.message);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Messages, BrokenTraces,
    ::testing::Values(
        BrokenTrace{"azure", "azure_short_row.csv", "azure_short_row.csv:3: expected 3 columns, got 2"},
        BrokenTrace{"azure", "azure_bad_timestamp.csv",
                    "azure_bad_timestamp.csv:2: bad timestamp '2023-11-16 25:17:03.9799600' (expected YYYY-MM-DD "
                    "HH:MM:SS.fffffff)"},
        BrokenTrace{"azure", "azure_negative_tokens.csv",
                    "azure_negative_tokens.csv:4: ContextTokens is negative (-3)"},
        BrokenTrace{"azure", "azure_bad_tokens.csv",
                    "azure_bad_tokens.csv:2: bad GeneratedTokens '12x' (expected an integer)"},
        BrokenTrace{"azure", "azure_backwards.csv",
                    "azure_backwards.csv:4: out of order: timestamp is earlier than the previous row's (line 3)"},
        BrokenTrace{"azure", "azure_bad_header.csv",
                    "azure_bad_header.csv:1: expected the header 'TIMESTAMP,ContextTokens,GeneratedTokens'"},
        BrokenTrace{"azure", "azure_header_only.csv", "azure_header_only.csv: empty trace (no requests)"},
        BrokenTrace{"mooncake", "empty.jsonl", "empty.jsonl: empty trace (no requests)"},
        BrokenTrace{"mooncake", "mooncake_invalid_json.jsonl", "mooncake_invalid_json.jsonl:2: invalid JSON"},
        BrokenTrace{"mooncake", "mooncake_missing_field.jsonl",
                    "mooncake_missing_field.jsonl:3: missing field \"output_length\""},
        BrokenTrace{"mooncake", "mooncake_negative.jsonl",
                    "mooncake_negative.jsonl:2: \"input_length\" is negative (-1)"},
        BrokenTrace{"mooncake", "mooncake_backwards.jsonl",
                    "mooncake_backwards.jsonl:3: out of order: timestamp is earlier than the previous row's (line 2)"},
        BrokenTrace{"mooncake", "mooncake_not_object.jsonl", "mooncake_not_object.jsonl:2: expected a JSON object"},
        BrokenTrace{"computron", "computron_unknown_model.csv",
                    "computron_unknown_model.csv:3: unknown model 'llama' (scenario models: a, b, c)"}));

TEST(BrokenTraces, StartPastTheEnd) {
  try {
    replay(R"({"type":"trace","format":"azure","path":"azure_small.csv","start_s":10})");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "$.workload.start_s: no trace requests at or after 10 s (the last is at 3.0000002 s)");
  }
}

TEST(BrokenTraces, MissingFileNamesWhereItLooked) {
  try {
    replay(R"({"type":"trace","format":"azure","path":"no_such_trace.csv"})");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "no_such_trace.csv: cannot open file (looked for " + kFixtures + "/no_such_trace.csv)");
  }
}

}  // namespace
}  // namespace computron
