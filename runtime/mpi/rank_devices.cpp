#include "runtime/mpi/rank_devices.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <set>
#include <stdexcept>

#include "common/types.h"

namespace computron::runtime::rank {
namespace {

// A device of another rank: jobs travel there, events come back through the factory.
class RemoteDevice final : public Device {
 public:
  RemoteDevice(RankDeviceFactory& owner, GpuId gpu, int rank) : owner_(owner), gpu_(gpu), rank_(rank) {}
  GpuId id() const override { return gpu_; }
  std::string describe() const override { return owner_.describe(gpu_); }
  void connect(const std::vector<Device*>& /*devices*/) override {}
  void submit(PathJob job) override {
    DeviceEvent f;
    f.kind = DeviceEvent::Kind::kPathProgress;
    f.op = job.op;
    f.path = job.path;
    f.final = true;
    owner_.sendJob(gpu_, encodeJob(gpu_, job), f);
  }
  void submit(VerifyJob job) override {
    DeviceEvent f;
    f.kind = DeviceEvent::Kind::kVerifyDone;
    f.op = job.op;
    owner_.sendJob(gpu_, encodeJob(gpu_, job), f);
  }
  void submit(ExecJob job) override {
    DeviceEvent f;
    f.kind = DeviceEvent::Kind::kExecDone;
    f.batch = job.batch;
    f.path = job.part;
    owner_.sendJob(gpu_, encodeJob(gpu_, job), f);
  }
  void submit(RelocateJob job) override {
    DeviceEvent f;
    f.kind = DeviceEvent::Kind::kRelocateDone;
    f.op = job.token;
    f.ok = true;  // the moves are moot on a lost GPU; the backend only needs the pool unlocked
    owner_.sendJob(gpu_, encodeJob(gpu_, job), f);
  }
  void stop() override { owner_.stopRanks(); }
  std::byte* poolBase() override { return nullptr; }
  int process() const override { return rank_; }

 private:
  RankDeviceFactory& owner_;
  GpuId gpu_;
  int rank_;
};

constexpr int kPings = 8;

}  // namespace

RankDeviceFactory::RankDeviceFactory(DeviceFactory& local, Transport& transport, RankLayout layout,
                                     RankDevicesOptions options)
    : local_(local), transport_(transport), layout_(layout), options_(options) {
  if (transport_.rank() != 0) throw std::logic_error("RankDeviceFactory: the engine runs on rank 0");
  const auto n = static_cast<std::size_t>(layout_.ranks);
  ranks_.resize(n);
  for (int r = 0; r < layout_.ranks; ++r) {
    ranks_[static_cast<std::size_t>(r)].rank = r;
    for (int g = layout_.firstGpu(r); g < layout_.endGpu(r); ++g)
      ranks_[static_cast<std::size_t>(r)].gpus.push_back(g);
  }
  ranks_[0].host = transport_.hostName();
  hello_.assign(n, false);
  hello_[0] = true;
  stopped_.assign(n, false);
  stopped_[0] = true;
  hellos_.resize(n);
  outstanding_.resize(n);
  offset_.assign(n, 0);
  pong_.assign(n, -1);
  pong_at_.assign(n, 0);
  transport_.start([this](int source, std::string message) { onMessage(source, std::move(message)); },
                   [this](int r, const std::string& reason) { onLost(r, reason); });
}

RankDeviceFactory::~RankDeviceFactory() { transport_.stop(); }

std::unique_ptr<Device> RankDeviceFactory::create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes,
                                                  CompletionQueue& queue, const Clock& clock) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto* steady = dynamic_cast<const SteadyClock*>(&clock);
    if (steady == nullptr) throw std::logic_error("RankDeviceFactory: devices need the backend's SteadyClock");
    const bool first = queue_ == nullptr;
    queue_ = &queue;
    clock_ = steady;
    // A rank lost between set-up and the first device: its GPUs are reported now.
    if (first)
      for (const RankStatus& st : ranks_)
        if (st.lost) reportLostGpusLocked(st, clock_->now());
  }
  const int r = layout_.owner(gpu);
  if (r == 0) return local_.create(gpu, pool_bytes, chunk_bytes, queue, clock);
  if (r >= layout_.ranks) throw ConfigError("GPU " + std::to_string(gpu) + " belongs to no rank");
  return std::make_unique<RemoteDevice>(*this, gpu, r);
}

std::map<std::pair<ModelId, int>, std::uint64_t> RankDeviceFactory::remoteChecksums() {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(options_.setup_timeout);
  auto all = [&] {
    for (int r = 0; r < layout_.ranks; ++r)
      if (!hello_[static_cast<std::size_t>(r)] && !ranks_[static_cast<std::size_t>(r)].lost) return false;
    return true;
  };
  cv_.wait_until(lock, deadline, all);
  std::string missing;
  for (int r = 1; r < layout_.ranks; ++r) {
    const auto& st = ranks_[static_cast<std::size_t>(r)];
    if (st.lost) throw ConfigError("rank " + std::to_string(r) + " was lost while setting up: " + st.reason);
    if (!hello_[static_cast<std::size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    const std::string& error = hellos_[static_cast<std::size_t>(r)].error;
    if (!error.empty()) throw ConfigError("rank " + std::to_string(r) + " could not set up: " + error);
  }
  if (!missing.empty())
    throw ConfigError("ranks " + missing + " did not finish setting up within " +
                      std::to_string(options_.setup_timeout / kNanosPerSecond) + " s");
  std::map<std::pair<ModelId, int>, std::uint64_t> sums;
  for (int r = 1; r < layout_.ranks; ++r) {
    for (const HelloShard& s : hellos_[static_cast<std::size_t>(r)].shards) {
      auto [it, inserted] = sums.emplace(std::make_pair(s.model, s.shard), s.checksum);
      if (!inserted && it->second != s.checksum)
        throw ConfigError("ranks disagree on the checksum of model " + std::to_string(s.model) + " shard " +
                          std::to_string(s.shard) + ": are they running the same build and scenario?");
    }
  }
  // Clock offsets of ranks on other hosts (on this host they share the monotonic clock): the
  // ping with the shortest round trip, assuming the two directions take as long.
  for (int r = 1; r < layout_.ranks; ++r) {
    if (hellos_[static_cast<std::size_t>(r)].clock == clockId(ranks_[0].host)) continue;
    Nanos best_rtt = std::numeric_limits<Nanos>::max();
    for (int i = 0; i < kPings; ++i) {
      pong_[static_cast<std::size_t>(r)] = -1;
      const Nanos t0 = SteadyClock::steadyNanos();
      transport_.send(r, encodeSignal(MsgType::kPing, t0));
      if (!cv_.wait_for(lock, std::chrono::seconds(5), [&] {
            return pong_[static_cast<std::size_t>(r)] >= 0 || ranks_[static_cast<std::size_t>(r)].lost;
          }) ||
          ranks_[static_cast<std::size_t>(r)].lost)
        throw ConfigError("rank " + std::to_string(r) + " did not answer the clock ping");
      const Nanos t1 = pong_at_[static_cast<std::size_t>(r)];
      if (t1 - t0 < best_rtt) {
        best_rtt = t1 - t0;
        offset_[static_cast<std::size_t>(r)] = t0 + (t1 - t0) / 2 - pong_[static_cast<std::size_t>(r)];
      }
    }
  }
  return sums;
}

std::string RankDeviceFactory::describe(GpuId gpu) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const int r = layout_.owner(gpu);
  const Hello& h = hellos_.at(static_cast<std::size_t>(r));
  for (std::size_t i = 0; i < h.gpus.size() && i < h.describe.size(); ++i)
    if (h.gpus[i] == gpu) return "rank " + std::to_string(r) + " (" + h.host + "): " + h.describe[i];
  return "rank " + std::to_string(r) + ": GPU " + std::to_string(gpu);
}

RankDeviceFactory::JobKey RankDeviceFactory::keyOf(const DeviceEvent& ev) {
  using Kind = DeviceEvent::Kind;
  switch (ev.kind) {
    case Kind::kPathProgress:
      return {static_cast<int>(ev.kind), ev.op, ev.path};
    case Kind::kExecDone:
      return {static_cast<int>(ev.kind), static_cast<std::uint64_t>(ev.batch), ev.path};
    default:
      return {static_cast<int>(ev.kind), ev.op, 0};
  }
}

void RankDeviceFactory::pushLocked(DeviceEvent ev) {
  // Null before the devices exist and once the ranks stopped (the backend is going away).
  if (queue_ != nullptr) queue_->push(std::move(ev));
}

void RankDeviceFactory::sendJob(GpuId gpu, std::string message, DeviceEvent failure) {
  const int r = layout_.owner(gpu);
  std::lock_guard<std::mutex> lock(mutex_);
  RankStatus& st = ranks_.at(static_cast<std::size_t>(r));
  failure.gpu = gpu;
  failure.ok = failure.kind == DeviceEvent::Kind::kRelocateDone;
  if (st.lost || stopping_) {
    failure.error = "GPU " + std::to_string(gpu) + " is gone: " + (st.lost ? st.reason : "the run is stopping");
    failure.time = failure.start = clock_ != nullptr ? clock_->now() : 0;
    pushLocked(std::move(failure));
    return;
  }
  ++st.jobs;
  const JobKey key = keyOf(failure);
  outstanding_[static_cast<std::size_t>(r)][key] = Outstanding{std::move(failure)};
  transport_.send(r, std::move(message));
}

Nanos RankDeviceFactory::toLocal(int r, Nanos remote) const {
  return remote + offset_[static_cast<std::size_t>(r)] - clock_->epoch();
}

void RankDeviceFactory::onMessage(int source, std::string message) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (source <= 0 || source >= layout_.ranks) return;
  const auto s = static_cast<std::size_t>(source);
  if (ranks_[s].lost) return;
  try {
    switch (peekType(message)) {
      case MsgType::kHello:
        hellos_[s] = decodeHello(message);
        ranks_[s].host = hellos_[s].host;
        hello_[s] = true;
        cv_.notify_all();
        return;
      case MsgType::kPong:
        pong_[s] = decodeSignal(message, MsgType::kPong);
        pong_at_[s] = SteadyClock::steadyNanos();
        cv_.notify_all();
        return;
      case MsgType::kStopped:
        stopped_[s] = true;
        transport_.retire(source);  // its silence from now on is not a loss
        cv_.notify_all();
        return;
      case MsgType::kAbort:
        // It met a message it could not handle and left.
        failRankLocked(source, "it could not handle a message and stopped (its log says which)");
        return;
      case MsgType::kTokens: {
        std::vector<TokenDelivery> tokens = decodeTokens(message);
        if (!tokens_ || queue_ == nullptr) return;  // not serving, or the backend is gone
        for (TokenDelivery& t : tokens) t.time = toLocal(source, t.time);
        // Before any later event of this rank is pushed (messages of one rank arrive in order,
        // and the rank sends a part's tokens before its completion).
        tokens_->deliver(std::move(tokens));
        return;
      }
      case MsgType::kEvent: {
        DeviceEvent ev = decodeEvent(message);
        if (layout_.owner(ev.gpu) != source)
          throw wire::WireError("an event for GPU " + std::to_string(ev.gpu) + ", which it does not own");
        // Only for a job it was given and has not finished: each job completes exactly once.
        auto it = outstanding_[s].find(keyOf(ev));
        if (it == outstanding_[s].end())
          throw wire::WireError("an event for no job it holds (kind " + std::to_string(static_cast<int>(ev.kind)) + ")");
        if (ev.kind != DeviceEvent::Kind::kPathProgress || ev.final) outstanding_[s].erase(it);
        if (queue_ == nullptr) return;  // detached: the backend is gone
        ev.time = toLocal(source, ev.time);
        if (ev.start != 0) ev.start = toLocal(source, ev.start);
        for (Nanos& t : ev.step_end) t = toLocal(source, t);
        pushLocked(std::move(ev));
        return;
      }
      default:
        throw wire::WireError("an unexpected message type");
    }
  } catch (const std::exception& e) {
    // A rank that speaks nonsense is treated as lost: nothing it says can be trusted.
    failRankLocked(source, std::string("sent a bad message: ") + e.what());
  }
}

void RankDeviceFactory::sendCancel(GpuId gpu, RequestId request) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int r = layout_.owner(gpu);
  if (r <= 0 || r >= layout_.ranks || ranks_[static_cast<std::size_t>(r)].lost) return;
  transport_.send(r, encodeSignal(MsgType::kCancel, request));
}

void RankExecution::watch() {
  std::unique_lock<std::mutex> lock(watch_mutex_);
  while (!stopping_) {
    watch_cv_.wait_for(lock, std::chrono::milliseconds(5));
    std::vector<std::pair<GpuId, RequestId>> cancels;
    for (auto it = watched_.begin(); it != watched_.end();) {
      const auto payload = it->payload.lock();
      if (payload && payload->cancelled.load()) cancels.emplace_back(it->gpu, it->request);
      if (!payload || payload->cancelled.load()) {
        it = watched_.erase(it);
      } else {
        ++it;
      }
    }
    lock.unlock();
    for (const auto& [gpu, request] : cancels) factory_.sendCancel(gpu, request);
    lock.lock();
  }
}

void RankExecution::stop() {
  {
    std::lock_guard<std::mutex> lock(watch_mutex_);
    stopping_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void RankDeviceFactory::setTokenChannel(std::shared_ptr<TokenChannel> channel) {
  std::lock_guard<std::mutex> lock(mutex_);
  tokens_ = std::move(channel);
}

void RankDeviceFactory::onLost(int r, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (r <= 0 || r >= layout_.ranks) return;
  failRankLocked(r, reason);
}

void RankDeviceFactory::failRankLocked(int r, const std::string& reason) {
  const auto s = static_cast<std::size_t>(r);
  RankStatus& st = ranks_[s];
  if (st.lost || stopped_[s]) return;  // a rank that finished is not lost by falling silent
  st.lost = true;
  st.reason = "rank " + std::to_string(r) + " lost: " + reason;
  cv_.notify_all();
  // The other GPU ranks abort the collective groups they share with it (a TP or PP group that
  // spans ranks would otherwise wait for it forever), and stop waiting for its group ids.
  for (int q = std::max(1, layout_.first_gpu_rank); q < layout_.ranks; ++q)
    if (q != r && !ranks_[static_cast<std::size_t>(q)].lost && !stopped_[static_cast<std::size_t>(q)])
      transport_.send(q, encodeSignal(MsgType::kRankLost, r));
  if (queue_ == nullptr) return;  // no backend (setting up: remoteChecksums() reports it; or gone)
  const Nanos now = clock_->now();
  for (auto& [key, out] : outstanding_[s]) {
    DeviceEvent ev = std::move(out.failure);
    ev.error = st.reason;
    ev.time = ev.start = now;
    ++st.failed_on_loss;
    pushLocked(std::move(ev));
  }
  outstanding_[s].clear();
  reportLostGpusLocked(st, now);
}

void RankDeviceFactory::reportLostGpusLocked(const RankStatus& st, Nanos now) {
  for (GpuId g : st.gpus) {
    DeviceEvent ev;
    ev.kind = DeviceEvent::Kind::kGpuLost;
    ev.gpu = g;
    ev.error = st.reason;
    ev.time = now;
    pushLocked(std::move(ev));
  }
}

void RankDeviceFactory::stopRanks() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_) return;
  stopping_ = true;
  // The stop says whether a rank was lost: then no rank may wait for it in MPI_Finalize.
  bool any_lost = false;
  for (const RankStatus& st : ranks_) any_lost = any_lost || st.lost;
  if (any_lost) transport_.leaveWithoutFinalize();
  for (int r = 1; r < layout_.ranks; ++r)
    if (!ranks_[static_cast<std::size_t>(r)].lost) transport_.send(r, encodeSignal(MsgType::kStop, any_lost ? 1 : 0));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(options_.stop_timeout);
  cv_.wait_until(lock, deadline, [&] {
    for (int r = 1; r < layout_.ranks; ++r)
      if (!stopped_[static_cast<std::size_t>(r)] && !ranks_[static_cast<std::size_t>(r)].lost) return false;
    return true;
  });
  // Each rank sent its last events before kStopped; nothing later reaches the backend.
  queue_ = nullptr;
}

void RankDeviceFactory::detach() {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_ = nullptr;
  clock_ = nullptr;
}

void RankDeviceFactory::abortRanks() {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_ = nullptr;
  clock_ = nullptr;
  stopping_ = true;
  transport_.leaveWithoutFinalize();  // the ranks leave without it too
  for (int r = 1; r < layout_.ranks; ++r)
    if (!ranks_[static_cast<std::size_t>(r)].lost) transport_.send(r, encodeSignal(MsgType::kAbort));
}

std::vector<RankStatus> RankDeviceFactory::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return ranks_;
}

void RankExecution::validate(const EngineConfig& config) const {
  inner_->validate(config);
  const RankLayout& layout = factory_.layout();
  for (const ModelDeployment& d : config.models) {
    // A model may span GPU ranks: their executions build its groups from a shared id.
    std::set<int> ranks;
    for (GpuId g : d.gpus) ranks.insert(layout.owner(g));
    if (*ranks.begin() == 0)
      throw ConfigError("real execution under mpirun: model " + d.name + " is on rank 0's GPUs; run the engine alone "
                        "(--engine-only) so every model runs on a GPU rank");
  }
}

void RankExecution::submit(ExecPart part) {
  if (part.gate)
    throw std::logic_error("real execution under mpirun: a batch behind a load (policy.layer_pipelined) is not supported");
  // Served requests: their prompts and sampling go with the part to the rank that runs it (a
  // session's step carries those of the sequences it names, every step).
  if (const auto channel = inner_->tokenChannel()) {
    bool any = false;
    part.payloads.clear();
    // A decode step reads a payload's sampling and stop ids only: its prompt stays behind.
    const bool decode_step = part.step && part.step->prefill.empty();
    for (std::size_t i = 0; i < payloadSlots(part); ++i) {
      std::shared_ptr<const RequestPayload> payload = channel->find(payloadRequest(part, i));
      if (payload && decode_step && !payload->prompt.empty()) {
        auto light = std::make_shared<RequestPayload>();
        light->temperature = payload->temperature;
        light->top_p = payload->top_p;
        light->top_k = payload->top_k;
        light->seed = payload->seed;
        light->stop_ids = payload->stop_ids;
        light->cancelled.store(payload->cancelled.load());
        payload = std::move(light);
      }
      part.payloads.push_back(std::move(payload));
      any = any || part.payloads.back() != nullptr;
    }
    if (!any) part.payloads.clear();
    // A cancel reaches request-level batches only: a session steps its sequences to the end.
    std::lock_guard<std::mutex> lock(watch_mutex_);
    for (std::size_t i = 0; i < part.payloads.size() && !part.step; ++i)
      if (part.payloads[i]) watched_.push_back({part.gpu, part.requests[i].id, part.payloads[i]});
    if (!part.payloads.empty() && !part.step && !watcher_.joinable() && !stopping_)
      watcher_ = std::thread([this] { watch(); });
  }
  DeviceEvent failure;
  failure.kind = DeviceEvent::Kind::kExecDone;
  failure.batch = part.batch;
  failure.path = part.part;
  const GpuId gpu = part.gpu;
  factory_.sendJob(gpu, encodeExecPart(part), failure);
}

}  // namespace computron::runtime::rank
