// The runtime over several processes (runtime/mpi/) without mpirun: the ranks are threads joined
// by an in-process transport, each GPU rank with its own host-memory devices and its own part
// of the host store. Checks the message encoding, that a run makes the same engine decisions as
// one process, that a lost rank fails exactly its work with the reason while the others serve,
// and that a rank's set-up error stops the run naming it. mpirun itself: tests/mpi/.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <iterator>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/core/engine.h"
#include "runtime/host_device.h"
#include "runtime/mpi/messages.h"
#include "runtime/mpi/rank_devices.h"
#include "runtime/mpi/rank_worker.h"
#include "runtime/real_backend.h"
#include "runtime/token_channel.h"
#include "runtime/realtime_driver.h"
#include "tests/support/engine_fakes.h"
#include "tests/support/runtime_options.h"
#include "tests/support/tiny_model.h"
#include "tests/support/vector_source.h"

namespace computron::runtime::rank {
namespace {

// ---- messages ----

TEST(RankMessages, JobsAndEventsComeBackAsSent) {
  PathJob p;
  p.op = 77;
  p.path = 2;
  p.model = 5;
  p.host_model = 3;
  p.shard = 1;
  p.target = 4;
  p.kind = PathKind::kRelay;
  p.dst_offset = 1 << 20;
  p.src_offset = 12;
  p.chunks = {{0, 4096, 0}, {4096, 100, 1}};
  p.notify = {{0, 0}, {1, 1}};
  p.first_chunk = 1;
  DecodedJob d = decodeJob(encodeJob(4, p));
  EXPECT_EQ(d.type, MsgType::kPathJob);
  EXPECT_EQ(d.device, 4);
  EXPECT_EQ(d.path.op, 77u);
  EXPECT_EQ(d.path.host_model, 3);
  EXPECT_EQ(d.path.kind, PathKind::kRelay);
  ASSERT_EQ(d.path.chunks.size(), 2u);
  EXPECT_EQ(d.path.chunks[1].offset, 4096);
  EXPECT_EQ(d.path.chunks[1].segment, 1);
  EXPECT_EQ(d.path.notify[1].covered_segment, 1);
  EXPECT_EQ(d.path.first_chunk, 1u);
  EXPECT_EQ(d.path.host, nullptr);  // the receiving rank resolves it in its own store

  ExecJob e;
  e.batch = 9;
  e.model = 2;
  e.part = 1;
  e.weights = {{64, 128}};
  e.phase_ns = {5, 6, 7};
  d = decodeJob(encodeJob(0, e));
  EXPECT_EQ(d.exec.batch, 9);
  EXPECT_EQ(d.exec.weights[0].bytes, 128);
  EXPECT_EQ(d.exec.phase_ns, (std::vector<Nanos>{5, 6, 7}));

  RelocateJob r{12, {{0, 64, 64}, {128, 0, 64}}};
  d = decodeJob(encodeJob(3, r));
  ASSERT_EQ(d.relocate.moves.size(), 2u);
  EXPECT_EQ(d.relocate.moves[1].from, 128);

  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kExecDone;
  ev.batch = 9;
  ev.path = 1;
  ev.gpu = 3;
  ev.ok = false;
  ev.error = "boom";
  ev.time = 1234;
  ev.start = 1000;
  ev.step_end = {1100, 1200};
  ev.stopped = {4, 17};
  const DeviceEvent back = decodeEvent(encodeEvent(ev));
  EXPECT_EQ(back.kind, ev.kind);
  EXPECT_EQ(back.batch, 9);
  EXPECT_FALSE(back.ok);
  EXPECT_EQ(back.error, "boom");
  EXPECT_EQ(back.step_end, ev.step_end);
  EXPECT_EQ(back.stopped, ev.stopped);

  Hello h;
  h.gpus = {2, 3};
  h.describe = {"x", "y"};
  h.shards = {{1, 0, 4096, 0xabcdef}};
  h.host = "node7";
  h.clock = clockId("node7");
  const Hello hb = decodeHello(encodeHello(h));
  EXPECT_EQ(hb.clock, h.clock);
  EXPECT_EQ(hb.gpus, h.gpus);
  EXPECT_EQ(hb.describe[1], "y");
  EXPECT_EQ(hb.shards[0].checksum, 0xabcdefu);
  EXPECT_EQ(hb.host, "node7");
}

TEST(RankMessages, TruncatedOrForgedMessagesAreRefused) {
  PathJob p;
  p.chunks = {{0, 4096, 0}};
  const std::string whole = encodeJob(1, p);
  for (std::size_t n = 0; n < whole.size(); ++n) EXPECT_THROW(decodeJob(whole.substr(0, n)), wire::WireError) << n;
  EXPECT_THROW(decodeJob(whole + "x"), wire::WireError);
  // A length field far past the message's end.
  std::string forged = whole;
  const std::size_t count_at = 1 + sizeof(GpuId) + sizeof(OpId) + sizeof(int) + 2 * sizeof(ModelId) + sizeof(int) +
                               sizeof(GpuId) + sizeof(PathKind) + 2 * sizeof(std::int64_t);
  forged[count_at + 7] = '\x7f';
  EXPECT_THROW(decodeJob(forged), wire::WireError);
  EXPECT_THROW(peekType(std::string(1, '\x00')), wire::WireError);
  EXPECT_THROW(peekType(""), wire::WireError);
  // A flag byte other than 0 or 1 (the event's `final`, after type, kind, op, batch, path, gpu,
  // segment).
  DeviceEvent flagged;
  std::string bad_flag = encodeEvent(flagged);
  bad_flag[1 + 4 + 8 + 8 + 4 + 4 + 4] = '\x02';
  EXPECT_THROW(decodeEvent(bad_flag), wire::WireError);
  // Internal events never travel.
  DeviceEvent internal;
  internal.kind = DeviceEvent::Kind::kGpuLost;
  EXPECT_THROW(decodeEvent(encodeEvent(internal)), wire::WireError);
}

// The fuzzer's seeds (fuzz/seeds/fuzz_rank_messages/, written by hand in the wire layout) are
// valid messages, so fuzzing starts from inside the format.
TEST(RankMessages, TheFuzzSeedsDecode) {
  const std::string dir = std::string(COMPUTRON_SOURCE_DIR) + "/fuzz/seeds/fuzz_rank_messages/";
  auto read = [&](const std::string& name) {
    std::ifstream in(dir + name, std::ios::binary);
    EXPECT_TRUE(in.good()) << name;
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const DecodedJob path = decodeJob(read("path_job.bin"));
  EXPECT_EQ(path.path.chunks.size(), 2u);
  EXPECT_EQ(path.path.kind, PathKind::kRelay);
  EXPECT_EQ(decodeJob(read("verify_job.bin")).verify.bytes, 4196);
  EXPECT_EQ(decodeJob(read("exec_job.bin")).exec.phase_ns, (std::vector<Nanos>{5, 6}));
  EXPECT_EQ(decodeJob(read("relocate_job.bin")).relocate.moves.size(), 1u);
  const DeviceEvent ev = decodeEvent(read("event.bin"));
  EXPECT_EQ(ev.error, "boom");
  EXPECT_EQ(ev.kind, DeviceEvent::Kind::kExecDone);
  const Hello h = decodeHello(read("hello.bin"));
  EXPECT_EQ(h.host, "node7");
  EXPECT_EQ(h.clock, "node7/0f1e2d3c-boot");
  EXPECT_EQ(h.shards.at(0).checksum, 0xabcdefu);
  EXPECT_EQ(decodeSignal(read("ping.bin"), MsgType::kPing), 123456);
  const GroupId group = decodeGroupId(read("group_id.bin"));
  EXPECT_EQ(group.key, "tp:1:2");
  EXPECT_EQ(group.id.size(), 128u);
  EXPECT_EQ(decodeSignal(read("rank_lost.bin"), MsgType::kRankLost), 2);
  const auto tokens = decodeTokens(read("tokens.bin"));
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(tokens[0].token, 100);
  EXPECT_EQ(tokens[0].time, 1234);
}

TEST(RankMessages, ServedPayloadsAndTokensComeBackAsSent) {
  ExecPart part;
  part.gpu = 2;
  part.requests = {fakes::makeRequest(4, 1, 0, 8, 3), fakes::makeRequest(5, 1, 0, 8, 3)};
  auto payload = std::make_shared<RequestPayload>();
  payload->prompt = {11, 12, 13};
  payload->temperature = 0.7f;
  payload->top_p = 0.9f;
  payload->top_k = 40;
  payload->seed = 77;
  payload->stop_ids = {2};
  // Sent with payloads {a, b} (one of them null), the part comes back with the same ones.
  auto roundTrip = [&](const ExecPart& sent) {
    const ExecPart back = decodeExecPart(encodeExecPart(sent));
    ASSERT_EQ(back.payloads.size(), sent.payloads.size());
    for (std::size_t i = 0; i < sent.payloads.size(); ++i) {
      if (!sent.payloads[i]) {
        EXPECT_EQ(back.payloads[i], nullptr) << i;
        continue;
      }
      ASSERT_NE(back.payloads[i], nullptr) << i;
      EXPECT_EQ(back.payloads[i]->prompt, payload->prompt);
      EXPECT_EQ(back.payloads[i]->temperature, 0.7f);
      EXPECT_EQ(back.payloads[i]->top_p, 0.9f);
      EXPECT_EQ(back.payloads[i]->top_k, 40);
      EXPECT_EQ(back.payloads[i]->seed, 77u);
      EXPECT_EQ(back.payloads[i]->stop_ids, payload->stop_ids);
    }
  };
  part.payloads = {payload, nullptr};
  roundTrip(part);
  part.payloads.clear();
  EXPECT_TRUE(decodeExecPart(encodeExecPart(part)).payloads.empty());
  part.payloads = {payload};  // not one per request
  EXPECT_THROW(encodeExecPart(part), std::logic_error);

  // A session's step: one payload per sequence it names (the joiners of a prefill step).
  ExecPart step_part;
  step_part.gpu = 1;
  auto step = std::make_shared<StepCommand>();
  step->batch = 9;
  StepSequence a, b;
  a.request = fakes::makeRequest(7, 0, 0, 8, 3);
  b.request = fakes::makeRequest(8, 0, 0, 8, 3);
  step->prefill = {a, b};
  step->decode = {a};
  step_part.step = step;
  step_part.payloads = {nullptr, payload};
  roundTrip(step_part);
  EXPECT_EQ(payloadRequest(decodeExecPart(encodeExecPart(step_part)), 1), 8);
  step_part.payloads = {payload};  // not one per sequence
  EXPECT_THROW(encodeExecPart(step_part), std::logic_error);

  const std::vector<TokenDelivery> tokens = {{4, 0, 100, false, 1234}, {4, 1, 2, true, 1300}};
  const std::string whole = encodeTokens(tokens);
  const auto got = decodeTokens(whole);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].request, 4);
  EXPECT_EQ(got[1].index, 1);
  EXPECT_EQ(got[1].token, 2);
  EXPECT_TRUE(got[1].stop);
  EXPECT_EQ(got[1].time, 1300);
  for (std::size_t n = 0; n < whole.size(); ++n) EXPECT_THROW(decodeTokens(whole.substr(0, n)), wire::WireError) << n;
  std::string bad_stop = whole;
  bad_stop[1 + 8 + 8 + 4 + 4] = '\x02';  // the first token's stop flag
  EXPECT_THROW(decodeTokens(bad_stop), wire::WireError);
}

TEST(RankMessages, GroupIdsComeBackAsSentAndTruncationsAreRefused) {
  GroupId group;
  group.key = "pp:0:2:4";
  group.id = std::string(128, '\0');
  for (std::size_t i = 0; i < group.id.size(); ++i) group.id[i] = static_cast<char>(i * 7);
  const std::string whole = encodeGroupId(group);
  EXPECT_EQ(peekType(whole), MsgType::kGroupId);
  const GroupId back = decodeGroupId(whole);
  EXPECT_EQ(back.key, group.key);
  EXPECT_EQ(back.id, group.id);
  for (std::size_t n = 0; n < whole.size(); ++n) EXPECT_THROW(decodeGroupId(whole.substr(0, n)), wire::WireError) << n;
  EXPECT_THROW(decodeGroupId(whole + "x"), wire::WireError);
  EXPECT_THROW(decodeGroupId(encodeSignal(MsgType::kRankLost, 1)), wire::WireError);
  const char past_last = static_cast<char>(static_cast<int>(MsgType::kCancel) + 1);
  EXPECT_THROW(peekType(std::string(1, past_last)), wire::WireError);
}

TEST(RankMessages, ExecPartsComeBackAsSent) {
  ExecPart part;
  part.gpu = 3;
  part.batch = 11;
  part.part = 1;
  part.model = 2;
  part.shard = 1;
  part.weights_offset = 4096;
  Request q;
  q.id = 5;
  q.model = 2;
  q.arrival = 77;
  q.prompt_tokens = 16;
  q.output_tokens = 4;
  part.requests = {q};
  auto step = std::make_shared<StepCommand>();
  step->batch = 11;
  step->step = 3;
  step->model = 2;
  step->tp = 2;
  step->gpus = {2, 3};
  step->prefill = {{q, 16, 0}};
  step->decode = {{q, 20, 4}};
  step->retired = {9};
  part.step = step;
  const ExecPart back = decodeExecPart(encodeExecPart(part));
  EXPECT_EQ(back.gpu, 3);
  EXPECT_EQ(back.weights_offset, 4096);
  EXPECT_EQ(back.weights, nullptr);
  ASSERT_EQ(back.requests.size(), 1u);
  EXPECT_EQ(back.requests[0], q);
  ASSERT_TRUE(back.step);
  EXPECT_EQ(back.step->gpus, step->gpus);
  EXPECT_EQ(back.step->decode[0].context, 20);
  EXPECT_EQ(back.step->retired, step->retired);
  part.step = nullptr;
  EXPECT_FALSE(decodeExecPart(encodeExecPart(part)).step);
}

// ---- an in-process transport ----

// Ranks as threads. Each endpoint delivers on its own thread, in order; kill(r) makes rank r
// silent both ways and tells the ranks that watch it (rank 0 watches all, the others rank 0).
class Hub {
 public:
  // `hosts_apart`: each rank names a host of its own, so rank 0 measures the clock offsets by
  // ping (same clock here, so they come out near 0).
  explicit Hub(int ranks, bool hosts_apart = false) : hosts_apart_(hosts_apart), endpoints_(static_cast<std::size_t>(ranks)) {
    for (int r = 0; r < ranks; ++r) endpoints_[static_cast<std::size_t>(r)] = std::make_unique<Endpoint>(*this, r);
  }
  Transport& at(int r) { return *endpoints_[static_cast<std::size_t>(r)]; }
  void kill(int r) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dead_.insert(r);
    }
    for (std::size_t o = 0; o < endpoints_.size(); ++o) {
      const int other = static_cast<int>(o);
      if (other == r || (other != 0 && r != 0)) continue;
      endpoints_[o]->push({r, std::string(), true});
    }
  }

 private:
  struct Item {
    int source;
    std::string message;
    bool lost;
  };
  class Endpoint final : public Transport {
   public:
    Endpoint(Hub& hub, int r) : hub_(hub), rank_(r) {}
    ~Endpoint() override { stop(); }
    int rank() const override { return rank_; }
    int size() const override { return static_cast<int>(hub_.endpoints_.size()); }
    std::string hostName() const override {
      return hub_.hosts_apart_ ? "test-host-" + std::to_string(rank_) : "test-host";
    }
    void start(MessageHandler on_message, LostHandler on_lost) override {
      on_message_ = std::move(on_message);
      on_lost_ = std::move(on_lost);
      thread_ = std::thread([this] { run(); });
    }
    void send(int dest, std::string message) override {
      if (hub_.dead(rank_) || hub_.dead(dest)) return;
      hub_.endpoints_[static_cast<std::size_t>(dest)]->push({rank_, std::move(message), false});
    }
    void stop() override {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
      }
      cv_.notify_all();
      if (thread_.joinable()) thread_.join();
    }
    void push(Item item) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        inbox_.push_back(std::move(item));
      }
      cv_.notify_all();
    }

   private:
    void run() {
      std::unique_lock<std::mutex> lock(mutex_);
      for (;;) {
        cv_.wait(lock, [&] { return stop_ || !inbox_.empty(); });
        if (inbox_.empty()) return;  // stopping, nothing left
        Item item = std::move(inbox_.front());
        inbox_.pop_front();
        lock.unlock();
        if (item.lost) {
          on_lost_(item.source, "killed by the test");
        } else if (!hub_.dead(item.source) && !hub_.dead(rank_)) {
          on_message_(item.source, std::move(item.message));
        }
        lock.lock();
      }
    }
    Hub& hub_;
    int rank_;
    MessageHandler on_message_;
    LostHandler on_lost_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Item> inbox_;
    bool stop_ = false;
    std::thread thread_;
  };

  bool dead(int r) {
    std::lock_guard<std::mutex> lock(mutex_);
    return dead_.count(r) != 0;
  }

  bool hosts_apart_;
  std::mutex mutex_;
  std::set<int> dead_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
};

// ---- runs ----

ModelDeployment deployment(const std::string& name, int tp, std::vector<GpuId> gpus) {
  return fakes::tinyDeployment(name, tp, 1, std::move(gpus));
}

RuntimeOptions smallOptions() { return fakes::smallRuntimeOptions(/*threads=*/1, 300 * kNanosPerMicro); }

// The GPU ranks (1 .. ranks-1) of a run, each a thread running runRankWorker over its own
// host-memory devices with the options `optionsFor(rank)` gives. join() (or the destructor)
// waits for them; codes() are their exit codes, by rank.
class GpuRanks {
 public:
  GpuRanks(const EngineConfig& config, const RankLayout& layout, Hub& hub,
           const std::function<RuntimeOptions(int)>& optionsFor = [](int) { return smallOptions(); })
      : codes_(static_cast<std::size_t>(layout.ranks), -1), notes_(static_cast<std::size_t>(layout.ranks)) {
    for (int r = 1; r < layout.ranks; ++r) {
      locals_.push_back(std::make_unique<HostDeviceFactory>(layout.total_gpus));
      threads_.emplace_back([this, &config, layout, &hub, r, o = optionsFor(r), local = locals_.back().get()] {
        const auto i = static_cast<std::size_t>(r);
        codes_[i] = runRankWorker(config, *local, o, hub.at(r), layout, notes_[i]);
      });
    }
  }
  ~GpuRanks() { join(); }
  GpuRanks(const GpuRanks&) = delete;
  GpuRanks& operator=(const GpuRanks&) = delete;
  const std::vector<int>& join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    return codes_;
  }

 private:
  std::vector<int> codes_;
  std::vector<std::ostringstream> notes_;
  std::vector<std::unique_ptr<HostDeviceFactory>> locals_;
  std::vector<std::thread> threads_;
};

// Six GPUs over three ranks of two; GPUs 0 and 3 hold one shard at a time (swaps), one TP 2
// pair spans ranks 0 and 1, one lives on rank 2 alone.
EngineConfig sixGpuConfig(std::int64_t shard_bytes) {
  EngineConfig c;
  c.models = {deployment("a", 1, {0}), deployment("b", 1, {0}), deployment("c", 2, {1, 2}),
              deployment("d", 1, {3}), deployment("e", 1, {3}), deployment("f", 2, {4, 5}),
              deployment("g", 2, {4, 5})};
  c.gpu_weight_budget.assign(6, shard_bytes + shard_bytes / 2);
  c.policy.max_loaded_models = 0;
  return c;
}

std::vector<Request> spacedRequests(int count, int models, Nanos gap) {
  std::vector<Request> out;
  const int pattern[] = {0, 1, 2, 3, 4, 5, 6, 0, 3, 1, 4, 2, 6, 5};
  for (int i = 0; i < count; ++i) {
    Request r;
    r.id = i;
    r.model = pattern[i % 14] % models;
    r.arrival = (i + 1) * gap;
    r.prompt_tokens = 8;
    r.output_tokens = 1 + i % 3;
    out.push_back(r);
  }
  return out;
}

struct Log : EngineObserver {
  void onRequestDone(const RequestRecord& r) override {
    std::lock_guard<std::mutex> lock(mutex);
    records.push_back(r);
  }
  std::mutex mutex;
  std::vector<RequestRecord> records;
};

// Wraps a source: calls `hook(i)` as request i is pulled (on the driver's thread).
class HookedSource final : public RequestSource {
 public:
  HookedSource(std::vector<Request> requests, std::function<void(int)> hook)
      : inner_(std::move(requests)), hook_(std::move(hook)) {}
  std::optional<Request> next() override {
    auto r = inner_.next();
    if (r) hook_(pulled_++);
    return r;
  }
  bool exhausted() const override { return inner_.exhausted(); }

 private:
  fakes::VectorSource inner_;
  std::function<void(int)> hook_;
  int pulled_ = 0;
};

std::int64_t tinyShardBytes() {
  return RealBackend::shardLayout(deployment("x", 1, {0}), 0).bytes;
}

struct RunResult {
  std::string commands;
  std::vector<RequestRecord> records;
  std::vector<RankStatus> ranks;
  std::vector<int> worker_codes;
};

RunResult runOneProcess(const EngineConfig& config, const std::vector<Request>& requests) {
  HostDeviceFactory factory(6);
  RealBackend backend(config, factory, smallOptions());
  std::ostringstream commands;
  backend.setCommandLog(&commands);
  Log log;
  RealtimeDriver driver(backend, config, std::make_unique<fakes::VectorSource>(requests), &log, 60 * kNanosPerSecond);
  driver.run();
  driver.engine().checkInvariants();
  return {commands.str(), log.records, {}, {}};
}

RunResult runThreeRanks(EngineConfig config, const std::vector<Request>& requests, int kill_rank = -1,
                        int kill_at_request = -1, bool hosts_apart = false) {
  const RankLayout layout{3, 2, 6};
  for (int g = 0; g < 6; ++g) config.gpu_node.push_back(layout.owner(g));
  Hub hub(3, hosts_apart);
  RunResult result;
  GpuRanks gpu_ranks(config, layout, hub);
  {
    HostDeviceFactory own(6);
    RankDevicesOptions ro;
    ro.setup_timeout = 30 * kNanosPerSecond;
    ro.stop_timeout = 30 * kNanosPerSecond;
    RankDeviceFactory factory(own, hub.at(0), layout, ro);
    {
      RealBackend backend(config, factory, smallOptions());
      std::ostringstream commands;
      backend.setCommandLog(&commands);
      Log log;
      auto hook = [&](int i) {
        if (i == kill_at_request) hub.kill(kill_rank);
      };
      RealtimeDriver driver(backend, config, std::make_unique<HookedSource>(requests, hook), &log, 60 * kNanosPerSecond);
      driver.run();
      driver.engine().checkInvariants();
      result.commands = commands.str();
      result.records = log.records;
    }
    result.ranks = factory.status();
  }
  // A killed rank's thread still waits for rank 0: the kill was one-sided. Its loss of rank 0
  // (rank 0's transport is gone now) ends it.
  if (kill_rank > 0) hub.kill(0);
  result.worker_codes = gpu_ranks.join();
  return result;
}

// The requests are spaced well beyond what a load and a batch take on the host-memory device, so
// the decisions do not depend on how fast the ranks' threads run. Under the sanitizers threads
// stall now and then for 100 ms and more (in CI on 2 cores, one rank's load completion came after
// the next arrival at 40 and at 100 ms), so the gap is wider there.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr Nanos kDecisionGap = 400 * kNanosPerMilli;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr Nanos kDecisionGap = 400 * kNanosPerMilli;
#else
constexpr Nanos kDecisionGap = 100 * kNanosPerMilli;
#endif
#else
constexpr Nanos kDecisionGap = 100 * kNanosPerMilli;
#endif

TEST(RanksInProcess, ThreeRanksMakeTheSameDecisionsAsOneProcess) {
  const EngineConfig config = sixGpuConfig(tinyShardBytes());
  const auto requests = spacedRequests(28, 7, kDecisionGap);
  const RunResult one = runOneProcess(config, requests);
  const RunResult three = runThreeRanks(config, requests);
  EXPECT_EQ(one.commands, three.commands);
  EXPECT_NE(one.commands.find("evict"), std::string::npos) << "the scenario should swap";
  ASSERT_EQ(three.records.size(), requests.size());
  for (const auto& r : three.records) EXPECT_TRUE(r.ok) << r.request.id << ": " << r.error;
  for (const RankStatus& st : three.ranks) EXPECT_FALSE(st.lost) << st.reason;
  EXPECT_GT(three.ranks[1].jobs, 0);
  EXPECT_GT(three.ranks[2].jobs, 0);
  EXPECT_EQ(three.worker_codes[1], 0);
  EXPECT_EQ(three.worker_codes[2], 0);
}

TEST(RanksInProcess, RanksOnOtherHostsHaveTheirClocksMappedByPing) {
  const EngineConfig config = sixGpuConfig(tinyShardBytes());
  const auto requests = spacedRequests(14, 7, kDecisionGap);
  const RunResult one = runOneProcess(config, requests);
  const RunResult three = runThreeRanks(config, requests, -1, -1, /*hosts_apart=*/true);
  EXPECT_EQ(one.commands, three.commands);
  EXPECT_EQ(three.ranks[1].host, "test-host-1");
  ASSERT_EQ(three.records.size(), requests.size());
  // Times from the other ranks, mapped onto rank 0's clock: causally after the arrival and in
  // order within the request.
  for (const auto& r : three.records) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_GE(r.start, r.request.arrival) << r.request.id;
    EXPECT_GE(r.first_token, r.start) << r.request.id;
    EXPECT_GE(r.finish, r.first_token) << r.request.id;
    EXPECT_LT(r.finish - r.request.arrival, 5 * kNanosPerSecond) << r.request.id;
  }
}

TEST(RanksInProcess, ALostRankFailsOnlyTheWorkThatNeededItsGpusWithTheReason) {
  const EngineConfig config = sixGpuConfig(tinyShardBytes());
  const auto requests = spacedRequests(42, 7, 30 * kNanosPerMilli);
  const RunResult run = runThreeRanks(config, requests, /*kill_rank=*/2, /*kill_at_request=*/20);
  // Every request ended exactly once.
  ASSERT_EQ(run.records.size(), requests.size());
  std::set<RequestId> seen;
  for (const auto& r : run.records) EXPECT_TRUE(seen.insert(r.request.id).second) << r.request.id;
  ASSERT_TRUE(run.ranks[2].lost);
  EXPECT_NE(run.ranks[2].reason.find("killed by the test"), std::string::npos) << run.ranks[2].reason;
  EXPECT_FALSE(run.ranks[1].lost);
  int failed_after = 0;
  for (const auto& r : run.records) {
    const bool on_rank2 = r.request.model == 5 || r.request.model == 6;  // f, g on GPUs 4, 5
    if (!on_rank2) {
      EXPECT_TRUE(r.ok) << r.request.id << ": " << r.error;
    } else if (r.request.id >= 21) {
      // Arrived after the loss was known (or raced it): failed, saying why.
      EXPECT_FALSE(r.ok) << r.request.id;
      EXPECT_NE(r.error.find("lost"), std::string::npos) << r.error;
      ++failed_after;
    } else if (!r.ok) {
      EXPECT_NE(r.error.find("lost"), std::string::npos) << r.error;
    }
  }
  EXPECT_GT(failed_after, 0);
  EXPECT_EQ(run.worker_codes[1], 0);
  EXPECT_EQ(run.worker_codes[2], 1);  // it lost rank 0 (the test's second kill)
}

// Rank 0 owns every GPU: no RemoteDevice ever stops the ranks, so the end of the run must.
TEST(RanksInProcess, RanksWithoutGpusAreStoppedAtTheEndToo) {
  const EngineConfig config = sixGpuConfig(tinyShardBytes());
  const RankLayout layout{3, 6, 6};
  Hub hub(3);
  GpuRanks gpu_ranks(config, layout, hub);
  {
    HostDeviceFactory own(6);
    RankDeviceFactory factory(own, hub.at(0), layout);
    {
      RealBackend backend(config, factory, smallOptions());
      Log log;
      RealtimeDriver driver(backend, config, std::make_unique<fakes::VectorSource>(spacedRequests(7, 7, 10 * kNanosPerMilli)),
                            &log, 20 * kNanosPerSecond);
      driver.run();
      EXPECT_EQ(log.records.size(), 7u);
    }
    // What RankSession does once the backend is gone.
    factory.detach();
    factory.stopRanks();
    for (const RankStatus& st : factory.status()) {
      EXPECT_FALSE(st.lost) << st.reason;
      EXPECT_EQ(st.jobs, 0) << st.rank;
    }
  }
  const std::vector<int>& codes = gpu_ranks.join();
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(codes[2], 0);
}

// What the fake executions of these tests share: shards filled with 7s, no checks of their
// own, and helpers that start a part's completion and push it after `passes` passes of 100 us.
class FakeExecution : public ModelExecution {
 public:
  void validate(const EngineConfig&) const override {}
  void fillShard(const ModelDeployment&, ModelId, int, std::span<std::byte> image) const override {
    std::fill(image.begin(), image.end(), std::byte{7});
  }
  void start(const EngineConfig&, const std::vector<Device*>& devices, CompletionQueue& queue, const Clock& clock) override {
    devices_ = devices;
    queue_ = &queue;
    clock_ = &clock;
  }
  void stop() override {}
  bool supportsSteps() const override { return true; }

 protected:
  DeviceEvent begin(const ExecPart& part) const {
    DeviceEvent ev;
    ev.kind = DeviceEvent::Kind::kExecDone;
    ev.batch = part.batch;
    ev.path = part.part;
    ev.gpu = part.gpu;
    ev.start = clock_->now();
    return ev;
  }
  void complete(DeviceEvent ev, int passes = 1) const {
    for (int i = 0; i < passes; ++i) ev.step_end.push_back(clock_->now() + (i + 1) * 100 * kNanosPerMicro);
    ev.time = ev.step_end.back();
    queue_->push(std::move(ev));
  }
  const Clock& clock() const { return *clock_; }
  std::vector<Device*> devices_;

 private:
  CompletionQueue* queue_ = nullptr;
  const Clock* clock_ = nullptr;
};

// A model execution for the GPU ranks: each part "runs" for a fixed time and reports its passes,
// after checking it was handed its weights in this rank's own pool.
class PoolCheckingExecution final : public FakeExecution {
 public:
  std::string name() const override { return "pool-checking test execution"; }
  void submit(ExecPart part) override {
    DeviceEvent ev = begin(part);
    Device* d = devices_.at(static_cast<std::size_t>(part.gpu));
    // The rank's own pool, at the offset rank 0 placed the shard, holding the filled bytes.
    if (d == nullptr || part.weights != d->poolBase() + part.weights_offset || *part.weights != std::byte{7}) {
      ev.ok = false;
      ev.error = "weights not in this rank's pool";
    }
    ++parts;
    complete(std::move(ev), part.step ? 1 : std::max(1, part.requests.empty() ? 1 : part.requests[0].output_tokens));
  }
  std::atomic<int> parts{0};
};

// Real execution under mpirun, --engine-only: rank 0 holds no shard and runs no model; each part
// travels to the GPU rank, whose execution runs it on its pool.
TEST(RanksInProcess, RealExecutionRunsOnTheGpuRanks) {
  EngineConfig config = sixGpuConfig(tinyShardBytes());
  config.models = {deployment("a", 1, {0}), deployment("b", 1, {0}), deployment("c", 2, {2, 3}),
                   deployment("d", 1, {5})};
  const RankLayout layout{4, 2, 6, /*first_gpu_rank=*/1};  // rank 0 the engine; ranks 1-3 two GPUs each
  for (int g = 0; g < 6; ++g) config.gpu_node.push_back(layout.owner(g));
  Hub hub(4);
  std::vector<std::shared_ptr<PoolCheckingExecution>> executions;
  for (int r = 1; r < 4; ++r) executions.push_back(std::make_shared<PoolCheckingExecution>());
  GpuRanks gpu_ranks(config, layout, hub, [&](int r) {
    RuntimeOptions o = smallOptions();
    o.execution = executions[static_cast<std::size_t>(r - 1)];
    return o;
  });
  std::vector<Request> requests;
  const ModelId order[] = {0, 1, 2, 3, 0, 2, 1, 3};
  for (int i = 0; i < 8; ++i) requests.push_back(fakes::makeRequest(i, order[i], (i + 1) * 30 * kNanosPerMilli, 8, 3));
  {
    HostDeviceFactory own(6);
    RankDeviceFactory factory(own, hub.at(0), layout);
    {
      RuntimeOptions o = smallOptions();
      o.execution = std::make_shared<RankExecution>(std::make_shared<PoolCheckingExecution>(), factory);
      RealBackend backend(config, factory, o);
      EXPECT_EQ(backend.store().stats().shards, 0);  // rank 0 holds nothing
      Log log;
      RealtimeDriver driver(backend, config, std::make_unique<fakes::VectorSource>(requests), &log, 20 * kNanosPerSecond);
      driver.run();
      ASSERT_EQ(log.records.size(), requests.size());
      for (const auto& r : log.records) EXPECT_TRUE(r.ok) << r.request.id << ": " << r.error;
    }
  }
  const std::vector<int>& codes = gpu_ranks.join();
  EXPECT_GT(executions[0]->parts.load(), 0);  // a, b on GPU 0 (rank 1)
  EXPECT_GT(executions[1]->parts.load(), 0);  // c on GPUs 2, 3 (rank 2)
  EXPECT_GT(executions[2]->parts.load(), 0);  // d on GPU 5 (rank 3)
  for (int r = 1; r < 4; ++r) EXPECT_EQ(codes[static_cast<std::size_t>(r)], 0);
}

// The GPU ranks' execution of the tests below: PoolCheckingExecution's parts, and in start() what
// CudaModelExecution does for a model whose GPUs span ranks: one group id per such model, made by
// the rank of its first GPU and handed to the others through the exchange. gpusLost is recorded.
class GroupExchangingExecution final : public ModelExecution {
 public:
  explicit GroupExchangingExecution(int rank) : rank_(rank) {}
  std::string name() const override { return "group-exchanging test execution"; }
  void validate(const EngineConfig& config) const override { inner_.validate(config); }
  void fillShard(const ModelDeployment& m, ModelId id, int shard, std::span<std::byte> image) const override {
    inner_.fillShard(m, id, shard, image);
  }
  void setGroupExchange(GroupExchange exchange) override { exchange_ = std::move(exchange); }
  void start(const EngineConfig& config, const std::vector<Device*>& devices, CompletionQueue& queue, const Clock& clock) override {
    inner_.start(config, devices, queue, clock);
    auto local = [&](GpuId g) { return static_cast<std::size_t>(g) < devices.size() && devices[static_cast<std::size_t>(g)] != nullptr; };
    for (const ModelDeployment& d : config.models) {
      int here = 0;
      for (GpuId g : d.gpus) here += local(g);
      if (here == 0 || here == d.numShards()) continue;
      if (!exchange_) throw ConfigError("no group exchange for " + d.name);
      std::string key = "tp";
      for (GpuId g : d.gpus) key += ":" + std::to_string(g);
      const std::string made = local(d.gpus.front()) ? "id made by rank " + std::to_string(rank_) : "";
      const std::string id = exchange_(key, d.gpus, made);
      std::lock_guard<std::mutex> lock(mutex_);
      ids_[d.name] = id;
    }
  }
  void submit(ExecPart part) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++parts_by_model_[part.model];
    }
    inner_.submit(std::move(part));
  }
  void stop() override { inner_.stop(); }
  bool supportsSteps() const override { return true; }
  int partsOf(ModelId model) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = parts_by_model_.find(model);
    return it == parts_by_model_.end() ? 0 : it->second;
  }
  void gpusLost(const std::vector<GpuId>& gpus) override {
    std::lock_guard<std::mutex> lock(mutex_);
    lost_.insert(gpus.begin(), gpus.end());
  }
  std::map<std::string, std::string> ids() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ids_;
  }
  std::set<GpuId> lost() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lost_;
  }
  int parts() const { return inner_.parts.load(); }

 private:
  int rank_;
  GroupExchange exchange_;
  PoolCheckingExecution inner_;
  mutable std::mutex mutex_;
  std::map<std::string, std::string> ids_;
  std::set<GpuId> lost_;
  std::map<ModelId, int> parts_by_model_;
};

struct SpanningResult {
  std::vector<RequestRecord> records;
  std::vector<int> codes;  // the GPU ranks' exit codes, by rank
};

// Rank 0 the engine; ranks 1 and 2 own GPUs {0, 1} and {2, 3}. Model x (TP 2) spans them on GPUs
// 1 and 2; y lives on GPU 0 (rank 1), z on GPU 3 (rank 2). GPU rank r runs gpu_executions[r - 1];
// rank 0's RankExecution wraps `engine_side`, whose token channel (if any) is the serving loop's.
// Optionally rank `kill_rank` is killed as request `kill_at` is pulled.
SpanningResult runSpanningWith(const std::vector<Request>& requests,
                               const std::vector<std::shared_ptr<ModelExecution>>& gpu_executions,
                               std::shared_ptr<ModelExecution> engine_side, int kill_rank = -1, int kill_at = -1,
                               Batching batching = Batching::kRequest) {
  EngineConfig config = sixGpuConfig(tinyShardBytes());
  config.policy.batching = batching;
  config.models = {deployment("x", 2, {1, 2}), deployment("y", 1, {0}), deployment("z", 1, {3})};
  config.gpu_weight_budget.assign(4, tinyShardBytes() * 2);
  const RankLayout layout{3, 2, 4, /*first_gpu_rank=*/1};
  for (int g = 0; g < 4; ++g) config.gpu_node.push_back(layout.owner(g));
  Hub hub(3);
  SpanningResult result;
  GpuRanks gpu_ranks(config, layout, hub, [&](int r) {
    RuntimeOptions o = smallOptions();
    o.execution = gpu_executions.at(static_cast<std::size_t>(r - 1));
    return o;
  });
  {
    HostDeviceFactory own(4);
    RankDevicesOptions ro;
    ro.setup_timeout = 30 * kNanosPerSecond;
    ro.stop_timeout = 30 * kNanosPerSecond;
    RankDeviceFactory factory(own, hub.at(0), layout, ro);
    RuntimeOptions o = smallOptions();
    o.execution = std::make_shared<RankExecution>(std::move(engine_side), factory);
    factory.setTokenChannel(o.execution->tokenChannel());
    RealBackend backend(config, factory, o);
    Log log;
    auto hook = [&](int i) {
      if (i == kill_at) hub.kill(kill_rank);
    };
    RealtimeDriver driver(backend, config, std::make_unique<HookedSource>(requests, hook), &log, 30 * kNanosPerSecond);
    driver.run();
    driver.engine().checkInvariants();
    result.records = log.records;
  }
  if (kill_rank > 0) hub.kill(0);
  result.codes = gpu_ranks.join();
  return result;
}

struct SpanningRun {
  std::vector<RequestRecord> records;
  std::vector<std::shared_ptr<GroupExchangingExecution>> executions;  // by rank - 1
  std::vector<int> codes;
};

SpanningRun runSpanning(const std::vector<Request>& requests, int kill_rank = -1, int kill_at = -1) {
  SpanningRun run;
  std::vector<std::shared_ptr<ModelExecution>> gpu;
  for (int r = 1; r < 3; ++r) {
    run.executions.push_back(std::make_shared<GroupExchangingExecution>(r));
    gpu.push_back(run.executions.back());
  }
  SpanningResult result = runSpanningWith(requests, gpu, std::make_shared<PoolCheckingExecution>(), kill_rank, kill_at);
  run.records = std::move(result.records);
  run.codes = std::move(result.codes);
  return run;
}

std::vector<Request> spanningRequests(int count) {
  std::vector<Request> requests;
  for (int i = 0; i < count; ++i)
    requests.push_back(fakes::makeRequest(i, static_cast<ModelId>(i % 3), (i + 1) * 20 * kNanosPerMilli, 8, 3));
  return requests;
}

TEST(RanksInProcess, AModelAcrossRanksRunsOnBothWithOneGroupId) {
  const auto requests = spanningRequests(12);
  const SpanningRun run = runSpanning(requests);
  ASSERT_EQ(run.records.size(), requests.size());
  for (const auto& r : run.records) EXPECT_TRUE(r.ok) << r.request.id << ": " << r.error;
  // Both ranks of x's group got the id rank 1 (the owner of its first GPU) made, and only x has one.
  for (const auto& execution : run.executions) {
    const auto ids = execution->ids();
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(ids.at("x"), "id made by rank 1");
    EXPECT_GT(execution->parts(), 0);
    EXPECT_TRUE(execution->lost().empty());
  }
  // Each of x's batches ran one part on each rank (the parts of a batch complete it together);
  // y ran on rank 1 only, z on rank 2 only.
  const auto& rank1 = *run.executions[0];
  const auto& rank2 = *run.executions[1];
  EXPECT_GT(rank1.partsOf(0), 0);
  EXPECT_EQ(rank1.partsOf(0), rank2.partsOf(0));
  EXPECT_GT(rank1.partsOf(1), 0);
  EXPECT_EQ(rank2.partsOf(1), 0);
  EXPECT_GT(rank2.partsOf(2), 0);
  EXPECT_EQ(rank1.partsOf(2), 0);
  EXPECT_EQ(run.codes[1], 0);
  EXPECT_EQ(run.codes[2], 0);
}

// The execution here records the call; CudaModelExecution aborts the communicators (GPU only).
TEST(RanksInProcess, ALostRankIsReportedToTheOtherRanksExecutions) {
  const auto requests = spanningRequests(24);
  const SpanningRun run = runSpanning(requests, /*kill_rank=*/2, /*kill_at=*/10);
  ASSERT_EQ(run.records.size(), requests.size());
  std::set<RequestId> seen;
  for (const auto& r : run.records) {
    EXPECT_TRUE(seen.insert(r.request.id).second) << r.request.id;
    if (r.request.model == 1) {
      EXPECT_TRUE(r.ok) << r.request.id << ": " << r.error;  // y: rank 1 alone
    }
    if (!r.ok) {
      EXPECT_NE(r.error.find("lost"), std::string::npos) << r.error;
    }
  }
  // Rank 1's execution was told that rank 2's GPUs are gone (x's group would wait for GPU 2
  // forever), once.
  EXPECT_EQ(run.executions[0]->lost(), (std::set<GpuId>{2, 3}));
  EXPECT_EQ(run.codes[1], 0);
}

// Serving under mpirun: the engine's rank files each served request's payload in its token
// channel; the payloads travel with the parts, the GPU ranks' executions find them in their own
// channels and deliver tokens there, and those reach rank 0's channel before the parts complete.
class TokenEchoExecution final : public FakeExecution {
 public:
  std::string name() const override { return "token-echo test execution"; }
  void submit(ExecPart part) override {
    DeviceEvent ev = begin(part);
    // Shard 0 delivers, as the executor of TP rank 0 on the last stage does: token i of a
    // request is its prompt's first id + i. A session's step makes token `generated` of each
    // sequence it names: its seed + generated (a decode step's payloads come without prompts). A
    // token among the payload's stop ids ends the sequence (every shard reports it, as every rank
    // of a real group samples the same token).
    if (part.step) {
      const bool prefill = !part.step->prefill.empty();
      std::vector<TokenDelivery> out;
      for (const StepSequence& s : prefill ? part.step->prefill : part.step->decode) {
        const auto payload = channel_->find(s.request.id);
        if (!payload) {
          ++missing;
          continue;
        }
        if (payload->prompt.empty() == prefill) ++prompt_mismatch;
        const std::int32_t token = static_cast<std::int32_t>(payload->seed) + s.generated;
        const bool stop = std::find(payload->stop_ids.begin(), payload->stop_ids.end(), token) != payload->stop_ids.end();
        if (stop && report_stops) ev.stopped.push_back(s.request.id);
        out.push_back({s.request.id, s.generated, token, stop, clock().now()});
      }
      if (part.shard == 0) channel_->deliver(std::move(out));
      complete(std::move(ev));
      return;
    }
    if (part.shard == 0) {
      std::vector<TokenDelivery> out;
      for (const Request& r : part.requests) {
        const auto payload = channel_->find(r.id);
        if (!payload) {
          ++missing;
          continue;
        }
        for (int i = 0; i < r.output_tokens; ++i) out.push_back({r.id, i, payload->prompt.at(0) + i, false, clock().now()});
      }
      channel_->deliver(std::move(out));
    }
    complete(std::move(ev));
  }
  std::shared_ptr<TokenChannel> tokenChannel() const override { return channel_; }
  std::atomic<int> missing{0};
  std::atomic<int> prompt_mismatch{0};  // steps: a prefill without its prompt, or a decode with one
  // Off: this rank does not report its stops (as a rank a client's cancel has not reached yet).
  std::atomic<bool> report_stops{true};

 private:
  std::shared_ptr<TokenChannel> channel_ = std::make_shared<TokenChannel>();
};

TEST(RanksInProcess, ServedTokensComeBackFromTheGpuRanksBeforeTheirCompletions) {
  std::vector<std::shared_ptr<TokenEchoExecution>> executions;
  for (int r = 1; r < 3; ++r) executions.push_back(std::make_shared<TokenEchoExecution>());
  const auto requests = spanningRequests(15);
  auto engine_side = std::make_shared<TokenEchoExecution>();  // rank 0's channel (the serving loop's)
  for (const Request& r : requests) {
    auto payload = std::make_shared<RequestPayload>();
    payload->prompt = {static_cast<std::int32_t>(1000 * (r.id + 1)), 5, 6};
    payload->temperature = 0.5f;
    payload->stop_ids = {9};
    engine_side->tokenChannel()->put(r.id, payload);
  }
  const SpanningResult run = runSpanningWith(requests, {executions[0], executions[1]}, engine_side);
  EXPECT_EQ(run.codes[1], 0);
  EXPECT_EQ(run.codes[2], 0);
  const std::vector<RequestRecord>& records = run.records;
  ASSERT_EQ(records.size(), requests.size());
  std::map<RequestId, std::vector<TokenDelivery>> got;
  for (const TokenDelivery& t : engine_side->tokenChannel()->take()) got[t.request].push_back(t);
  for (const RequestRecord& rec : records) {
    ASSERT_TRUE(rec.ok) << rec.request.id << ": " << rec.error;
    const auto& tokens = got[rec.request.id];
    ASSERT_EQ(static_cast<int>(tokens.size()), rec.request.output_tokens) << rec.request.id;
    for (int i = 0; i < rec.request.output_tokens; ++i) {
      EXPECT_EQ(tokens[static_cast<std::size_t>(i)].index, i);
      EXPECT_EQ(tokens[static_cast<std::size_t>(i)].token, 1000 * (rec.request.id + 1) + i);
      EXPECT_LE(tokens[static_cast<std::size_t>(i)].time, rec.finish) << "a token after its request's completion";
    }
  }
  for (const auto& execution : executions) {
    EXPECT_EQ(execution->missing.load(), 0);                // every payload had arrived with its part
    EXPECT_EQ(execution->tokenChannel()->payloads(), 0u);  // and was dropped after its batch
  }
}

// Served requests under iteration batching across the ranks: each request's payload has prompt
// {1000 * (id + 1), 5, 6} and seed 1000 * (id + 1) (the token echo's step token is seed + index),
// then `adjust` may change it. Returns the run, the tokens rank 0's channel got per request, and
// the GPU ranks' executions (`configure` may set them up first).
struct ServedSessionRun {
  SpanningResult run;
  std::map<RequestId, std::vector<TokenDelivery>> got;
  std::vector<std::shared_ptr<TokenEchoExecution>> executions;  // by rank - 1
};

ServedSessionRun runServedSessions(const std::vector<Request>& requests,
                                   const std::function<void(const Request&, RequestPayload&)>& adjust = {},
                                   const std::function<void(std::vector<std::shared_ptr<TokenEchoExecution>>&)>& configure = {}) {
  ServedSessionRun out;
  for (int r = 1; r < 3; ++r) out.executions.push_back(std::make_shared<TokenEchoExecution>());
  if (configure) configure(out.executions);
  auto engine_side = std::make_shared<TokenEchoExecution>();
  for (const Request& r : requests) {
    auto payload = std::make_shared<RequestPayload>();
    payload->prompt = {static_cast<std::int32_t>(1000 * (r.id + 1)), 5, 6};
    payload->seed = static_cast<std::uint64_t>(1000 * (r.id + 1));
    if (adjust) adjust(r, *payload);
    engine_side->tokenChannel()->put(r.id, payload);
  }
  out.run = runSpanningWith(requests, {out.executions[0], out.executions[1]}, engine_side, -1, -1, Batching::kIteration);
  for (const TokenDelivery& t : engine_side->tokenChannel()->take()) out.got[t.request].push_back(t);
  return out;
}

// The same with iteration batching: every step carries the payloads of the sequences it names, so
// the GPU ranks sample and deliver each step's tokens for served requests, x's across two ranks.
TEST(RanksInProcess, ServedTokensOfSessionStepsComeBackFromTheGpuRanks) {
  const auto requests = spanningRequests(15);
  ServedSessionRun s = runServedSessions(requests);
  EXPECT_EQ(s.run.codes[1], 0);
  EXPECT_EQ(s.run.codes[2], 0);
  ASSERT_EQ(s.run.records.size(), requests.size());
  for (const RequestRecord& rec : s.run.records) {
    ASSERT_TRUE(rec.ok) << rec.request.id << ": " << rec.error;
    const auto& tokens = s.got[rec.request.id];
    ASSERT_EQ(static_cast<int>(tokens.size()), rec.request.output_tokens) << rec.request.id;
    for (int i = 0; i < rec.request.output_tokens; ++i) {
      EXPECT_EQ(tokens[static_cast<std::size_t>(i)].index, i);
      EXPECT_EQ(tokens[static_cast<std::size_t>(i)].token, 1000 * (rec.request.id + 1) + i);
    }
  }
  for (const auto& execution : s.executions) {
    EXPECT_EQ(execution->missing.load(), 0);                // every step brought its sequences' payloads
    EXPECT_EQ(execution->prompt_mismatch.load(), 0);        // prompts with prefill steps only
    EXPECT_EQ(execution->tokenChannel()->payloads(), 0u);  // and they were dropped after it
  }
}

// A stop id sampled on the GPU ranks ends the sequence there and then: the ranks send the stopped
// sequences with the step's completion, the engine retires them, and their records count the tokens
// made. The requests of x (split over ranks 1 and 2) and of y (rank 1) stop at their second token
// (of three); z's (rank 2) run to the end. Rank 2 reports no stops at all, as a rank that a
// client's cancel has not reached yet: x's sequences still end at that step for the whole group
// (the backend merges the parts' lists).
TEST(RanksInProcess, ASessionSequenceStoppedOnTheGpuRanksEndsAtThatStep) {
  const auto requests = spanningRequests(15);
  auto stops = [](RequestId id) { return id % 3 != 2; };  // models x (id % 3 == 0) and y (1)
  ServedSessionRun s = runServedSessions(
      requests,
      [&](const Request& r, RequestPayload& payload) {
        if (stops(r.id)) payload.stop_ids = {static_cast<std::int32_t>(1000 * (r.id + 1) + 1)};
      },
      [](std::vector<std::shared_ptr<TokenEchoExecution>>& executions) { executions[1]->report_stops = false; });
  EXPECT_EQ(s.run.codes[1], 0);
  EXPECT_EQ(s.run.codes[2], 0);
  ASSERT_EQ(s.run.records.size(), requests.size());
  int stopped = 0;
  for (const RequestRecord& rec : s.run.records) {
    ASSERT_TRUE(rec.ok) << rec.request.id << ": " << rec.error;
    const int expected = stops(rec.request.id) ? 2 : 3;
    stopped += stops(rec.request.id) ? 1 : 0;
    EXPECT_EQ(rec.request.output_tokens, expected) << rec.request.id;  // the tokens made
    const auto& tokens = s.got[rec.request.id];
    ASSERT_EQ(static_cast<int>(tokens.size()), expected) << rec.request.id << ": no step after the stop";
    EXPECT_EQ(tokens.back().stop, stops(rec.request.id)) << rec.request.id;
  }
  EXPECT_EQ(stopped, 10);
}

// A served request's client going away reaches the GPU rank running it: its copy of the payload
// is marked cancelled there, as the serving loop marks rank 0's. The execution waits (on its own
// thread, as a real one runs parts off the transport's thread) for the mark on requests whose
// prompt starts with -1.
class CancelAwareExecution final : public FakeExecution {
 public:
  std::string name() const override { return "cancel-aware test execution"; }
  void submit(ExecPart part) override {
    std::lock_guard<std::mutex> lock(mutex_);
    threads_.emplace_back([this, part = std::move(part)] {
      DeviceEvent ev = begin(part);
      for (const Request& r : part.requests) {
        const auto payload = channel_->find(r.id);
        if (!payload) continue;
        const bool wait = !payload->prompt.empty() && payload->prompt[0] == -1;
        for (int i = 0; wait && i < 3000 && !payload->cancelled.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (payload->cancelled.load()) {
          std::lock_guard<std::mutex> l(mutex_);
          cancelled_.insert(r.id);
        }
      }
      complete(std::move(ev));
    });
  }
  void stop() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }
  ~CancelAwareExecution() override { stop(); }
  std::shared_ptr<TokenChannel> tokenChannel() const override { return channel_; }
  std::set<RequestId> cancelled() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cancelled_;
  }

 private:
  std::shared_ptr<TokenChannel> channel_ = std::make_shared<TokenChannel>();
  mutable std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::set<RequestId> cancelled_;
};

TEST(RanksInProcess, AServedRequestsCancelReachesTheGpuRankRunningIt) {
  std::vector<std::shared_ptr<CancelAwareExecution>> executions;
  for (int r = 1; r < 3; ++r) executions.push_back(std::make_shared<CancelAwareExecution>());
  const auto requests = spanningRequests(9);
  auto engine_side = std::make_shared<TokenEchoExecution>();  // rank 0's channel
  for (const Request& r : requests) {
    auto payload = std::make_shared<RequestPayload>();
    payload->prompt = {r.id == 4 ? -1 : 3};
    if (r.id == 4) payload->cancelled.store(true);  // request 4 (model y, rank 1): its client has gone
    engine_side->tokenChannel()->put(r.id, payload);
  }
  const SpanningResult run = runSpanningWith(requests, {executions[0], executions[1]}, engine_side);
  ASSERT_EQ(run.records.size(), requests.size());
  EXPECT_EQ(executions[0]->cancelled(), (std::set<RequestId>{4}));  // rank 1 saw the cancel of its request
  EXPECT_TRUE(executions[1]->cancelled().empty());
}

TEST(RanksInProcess, RealExecutionRefusesAModelOnRankZero) {
  const RankLayout layout{3, 2, 6, 1};
  Hub hub(3);
  HostDeviceFactory own(6);
  RankDeviceFactory factory(own, hub.at(0), layout);
  RankExecution execution(std::make_shared<PoolCheckingExecution>(), factory);
  EngineConfig config;
  config.models = {deployment("spans", 2, {1, 2})};
  EXPECT_NO_THROW(execution.validate(config));  // across ranks 1 and 2: its groups span them
  const RankLayout with_engine_gpus{3, 2, 6, 0};
  Hub hub0(3);
  RankDeviceFactory factory0(own, hub0.at(0), with_engine_gpus);
  RankExecution execution0(std::make_shared<PoolCheckingExecution>(), factory0);
  config.models = {deployment("local", 1, {0})};
  EXPECT_THROW(execution0.validate(config), ConfigError);
}

TEST(RanksInProcess, ARankThatCannotSetUpStopsTheRunNamingIt) {
  const EngineConfig config = sixGpuConfig(tinyShardBytes());
  const RankLayout layout{3, 2, 6};
  Hub hub(3);
  GpuRanks gpu_ranks(config, layout, hub, [](int r) {
    RuntimeOptions o = smallOptions();
    if (r == 2) o.host.host_memory_limit = 4096;  // far too little for its shards
    return o;
  });
  {
    HostDeviceFactory own(6);
    RankDeviceFactory factory(own, hub.at(0), layout);
    try {
      RealBackend backend(config, factory, smallOptions());
      ADD_FAILURE() << "the backend should not start";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 2 could not set up: host weight store"), std::string::npos) << e.what();
      factory.abortRanks();
    }
  }
  const std::vector<int>& codes = gpu_ranks.join();
  EXPECT_EQ(codes[1], 1);
  EXPECT_EQ(codes[2], 2);
}

}  // namespace
}  // namespace computron::runtime::rank
