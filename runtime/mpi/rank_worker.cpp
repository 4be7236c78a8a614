#include "runtime/mpi/rank_worker.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "runtime/mpi/messages.h"

namespace computron::runtime::rank {
namespace {

// Device times on a GPU rank are raw steady_clock readings; rank 0 maps them onto its own clock
// (rank_devices.cpp), so no epoch needs agreeing on.
class RawSteadyClock final : public Clock {
 public:
  Nanos now() const override { return SteadyClock::steadyNanos(); }
};

// Runs `f` when the scope ends, however it ends.
class ScopeExit {
 public:
  explicit ScopeExit(std::function<void()> f) : f_(std::move(f)) {}
  ~ScopeExit() { f_(); }
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;

 private:
  std::function<void()> f_;
};

}  // namespace

int reportRankSetupError(Transport& transport, const std::string& error, std::ostream& log) {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  transport.start(
      [&](int source, std::string message) {
        if (source != 0) return;
        try {
          const MsgType type = peekType(message);
          if (type != MsgType::kStop && type != MsgType::kAbort) return;
        } catch (const std::exception&) {
          return;
        }
        std::lock_guard<std::mutex> lock(mutex);
        done = true;
        cv.notify_all();
      },
      [&](int r, const std::string&) {
        if (r != 0) return;
        std::lock_guard<std::mutex> lock(mutex);
        done = true;
        cv.notify_all();
      });
  ScopeExit stop_transport([&] { transport.stop(); });
  Hello hello;
  hello.host = transport.hostName();
  hello.clock = clockId(hello.host);
  hello.error = error;
  transport.send(0, encodeHello(hello));
  log << ("rank " + std::to_string(transport.rank()) + ": " + error + "\n") << std::flush;
  std::unique_lock<std::mutex> lock(mutex);
  cv.wait_for(lock, std::chrono::minutes(10), [&] { return done; });
  return 2;
}

int runRankWorker(const EngineConfig& config, DeviceFactory& local, const RuntimeOptions& options, Transport& transport,
                  RankLayout layout, std::ostream& log, const std::function<bool(GpuId)>& present) {
  const int me = transport.rank();
  std::vector<GpuId> mine;
  for (int g = layout.firstGpu(me); g < layout.endGpu(me); ++g) mine.push_back(g);

  std::mutex mutex;
  std::condition_variable cv;
  bool stop = false, abort = false, lost0 = false;
  std::string lost_reason;
  CompletionQueue queue;
  RawSteadyClock clock;
  std::unique_ptr<HostWeightStore> store;
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<Device*> by_gpu(static_cast<std::size_t>(layout.total_gpus), nullptr);
  std::atomic<bool> ready{false};
  // How long a GPU rank waits for a group's id: the rank that makes it builds its host store
  // first, as rank 0 waits that long for every rank's hello.
  constexpr auto group_wait = std::chrono::minutes(10);
  // Collective groups spanning ranks: ids received from the rank of each group's first GPU, and
  // the ranks rank 0 reported lost.
  std::map<std::string, std::string> group_ids;
  std::set<int> lost_ranks;
  std::vector<std::thread> aborters;  // gpusLost calls, joined before returning
  // Serving: the token channel of this rank's execution, and per batch the served requests whose
  // payloads it holds and how many of the batch's parts on this rank are still running.
  const std::shared_ptr<TokenChannel> tokens = options.execution ? options.execution->tokenChannel() : nullptr;
  struct Served {
    int parts = 0;
    std::vector<RequestId> requests;
  };
  std::map<BatchId, Served> served;

  auto fail = [&](GpuId gpu, DeviceEvent ev, const std::string& error) {
    ev.gpu = gpu;
    ev.ok = false;
    ev.final = true;
    ev.error = "rank " + std::to_string(me) + ": " + error;
    ev.time = ev.start = clock.now();
    queue.push(std::move(ev));
  };
  auto onMessage = [&](int source, std::string message) {
    if (source != 0) {
      // Another GPU rank speaks only to hand over a group id.
      try {
        if (peekType(message) != MsgType::kGroupId) return;
        GroupId group = decodeGroupId(message);
        std::lock_guard<std::mutex> lock(mutex);
        group_ids[group.key] = std::move(group.id);
        cv.notify_all();
      } catch (const std::exception& e) {
        log << "rank " << me << ": a bad message from rank " << source << " (" << e.what() << "); ignored\n";
      }
      return;
    }
    // The job's identity, once decoded: a job that cannot run still completes, as failed.
    DeviceEvent ev;
    GpuId target = -1;
    bool known = false;
    try {
      const MsgType type = peekType(message);
      switch (type) {
        case MsgType::kPing:
          transport.send(0, encodeSignal(MsgType::kPong, SteadyClock::steadyNanos()));
          return;
        case MsgType::kCancel: {
          // The client of a served request has gone: its executor drops it at its next step
          // (on one GPU; a group runs it to the end), as in one process.
          const auto id = static_cast<RequestId>(decodeSignal(message, MsgType::kCancel));
          if (tokens)
            if (const auto payload = tokens->find(id)) payload->cancelled.store(true);
          return;
        }
        case MsgType::kRankLost: {
          const auto r = static_cast<int>(decodeSignal(message, MsgType::kRankLost));
          std::vector<GpuId> gone;
          for (int g = layout.firstGpu(r); g < layout.endGpu(r); ++g) gone.push_back(g);
          {
            std::lock_guard<std::mutex> lock(mutex);
            lost_ranks.insert(r);
            cv.notify_all();
          }
          // On a thread of its own: the abort waits for executors to leave their NCCL calls,
          // and this transport thread must keep answering rank 0 meanwhile.
          if (options.execution && !gone.empty()) {
            std::lock_guard<std::mutex> lock(mutex);
            aborters.emplace_back([execution = options.execution, gone] { execution->gpusLost(gone); });
          }
          return;
        }
        case MsgType::kStop:
        case MsgType::kAbort: {
          // A stop after a rank was lost: leave without MPI_Finalize, which would wait for it.
          if (type == MsgType::kStop && decodeSignal(message, MsgType::kStop) != 0) transport.leaveWithoutFinalize();
          if (type == MsgType::kAbort) transport.leaveWithoutFinalize();
          std::lock_guard<std::mutex> lock(mutex);
          (type == MsgType::kStop ? stop : abort) = true;
          cv.notify_all();
          return;
        }
        case MsgType::kExecPart: {
          ExecPart part = decodeExecPart(message);
          // Served requests: file their payloads where this rank's executors look them up, until
          // every part of the batch on this rank has completed.
          if (!part.payloads.empty() && tokens) {
            std::lock_guard<std::mutex> lock(mutex);
            auto& held = served[part.batch];
            ++held.parts;
            for (std::size_t i = 0; i < part.payloads.size(); ++i) {
              if (!part.payloads[i]) continue;
              tokens->put(payloadRequest(part, i), part.payloads[i]);
              held.requests.push_back(payloadRequest(part, i));
            }
          }
          target = part.gpu;
          ev.kind = DeviceEvent::Kind::kExecDone;
          ev.batch = part.batch;
          ev.path = part.part;
          known = true;
          Device* device = ready && part.gpu >= 0 && part.gpu < layout.total_gpus
                               ? by_gpu[static_cast<std::size_t>(part.gpu)]
                               : nullptr;
          if (device == nullptr) return fail(part.gpu, ev, "no device for GPU " + std::to_string(part.gpu));
          if (!options.execution) return fail(part.gpu, ev, "runs no model execution (--execution placeholder?)");
          part.weights = device->poolBase() + part.weights_offset;
          options.execution->submit(std::move(part));
          return;
        }
        case MsgType::kPathJob:
        case MsgType::kVerifyJob:
        case MsgType::kExecJob:
        case MsgType::kRelocateJob:
          break;
        default:
          throw wire::WireError("an unexpected message type");
      }
      DecodedJob job = decodeJob(message);
      target = job.device;
      switch (job.type) {
        case MsgType::kPathJob:
          ev.kind = DeviceEvent::Kind::kPathProgress;
          ev.op = job.path.op;
          ev.path = job.path.path;
          break;
        case MsgType::kVerifyJob:
          ev.kind = DeviceEvent::Kind::kVerifyDone;
          ev.op = job.verify.op;
          break;
        case MsgType::kExecJob:
          ev.kind = DeviceEvent::Kind::kExecDone;
          ev.batch = job.exec.batch;
          ev.path = job.exec.part;
          break;
        default:
          ev.kind = DeviceEvent::Kind::kRelocateDone;
          ev.op = job.relocate.token;
          break;
      }
      known = true;
      Device* device = ready && job.device >= 0 && job.device < layout.total_gpus
                           ? by_gpu[static_cast<std::size_t>(job.device)]
                           : nullptr;
      if (device == nullptr) return fail(job.device, ev, "no device for GPU " + std::to_string(job.device));
      switch (job.type) {
        case MsgType::kPathJob:
          if (job.path.kind != PathKind::kFromDevice) {
            const HostShard* shard = store->find(job.path.host_model, job.path.shard);
            if (shard == nullptr || shard->data == nullptr)
              return fail(job.device, ev,
                          "holds no host copy of model " + std::to_string(job.path.host_model) + " shard " +
                              std::to_string(job.path.shard));
            job.path.host = shard->data;
          }
          device->submit(std::move(job.path));
          return;
        case MsgType::kVerifyJob:
          device->submit(job.verify);
          return;
        case MsgType::kExecJob:
          device->submit(std::move(job.exec));
          return;
        default:
          device->submit(std::move(job.relocate));
          return;
      }
    } catch (const std::exception& e) {
      if (known) return fail(target, ev, e.what());
      // Rank 0 cannot tell which job this was: say so and leave, so it fails this rank's work
      // instead of waiting on it.
      log << "rank " << me << ": a message from rank 0 it cannot decode (" << e.what() << "); leaving\n";
      transport.send(0, encodeSignal(MsgType::kAbort));
      std::lock_guard<std::mutex> lock(mutex);
      abort = true;
      cv.notify_all();
    }
  };
  auto onLost = [&](int r, const std::string& reason) {
    if (r != 0) return;
    std::lock_guard<std::mutex> lock(mutex);
    lost0 = true;
    lost_reason = reason;
    cv.notify_all();
  };
  // Runs last (declared before the transport's stop): once no handler can start another.
  ScopeExit join_aborters([&] {
    for (auto& t : aborters)
      if (t.joinable()) t.join();
  });
  transport.start(onMessage, onLost);
  // Whatever ends this function, the transport's handlers stop first: they use the locals above.
  ScopeExit stop_transport([&] { transport.stop(); });

  Hello hello;
  hello.host = transport.hostName();
  hello.clock = clockId(hello.host);
  try {
    auto plan = RealBackend::planStore(config, [&](GpuId g) { return layout.owner(g) == me; });
    HostStoreOptions host = options.host;
    host.pinner = local.pinner();
    if (options.execution) {
      // Real models: the shards in the executor's layout, as the backend fills them in one process.
      options.execution->validate(config);
      host.fill = [&](const ShardRequest& r, std::span<std::byte> image) {
        options.execution->fillShard(config.models[static_cast<std::size_t>(r.model)], r.model, r.shard, image);
      };
    }
    store = std::make_unique<HostWeightStore>(plan.requests, host);
    const std::vector<std::int64_t> regions = RealBackend::poolRegions(config, options.granule, layout.total_gpus);
    for (GpuId g : mine) {
      if (static_cast<std::size_t>(g) >= regions.size() || (present && !present(g))) continue;
      devices.push_back(local.create(g, regions[static_cast<std::size_t>(g)], options.chunk_bytes, queue, clock));
      by_gpu[static_cast<std::size_t>(g)] = devices.back().get();
      hello.gpus.push_back(g);
      hello.describe.push_back(devices.back()->describe());
    }
    for (auto& d : devices) d->connect(by_gpu);
    if (options.execution) {
      options.execution->setGroupExchange([&](const std::string& key, const std::vector<GpuId>& gpus, const std::string& id) {
        const int root = layout.owner(gpus.front());
        std::set<int> members;
        for (GpuId g : gpus) members.insert(layout.owner(g));
        members.erase(me);
        if (root == me) {
          {
            std::lock_guard<std::mutex> lock(mutex);
            for (int q : members)
              if (lost_ranks.count(q) > 0)
                throw ConfigError("rank " + std::to_string(me) + ": collective group " + key + " includes rank " +
                                  std::to_string(q) + ", which was lost");
          }
          for (int q : members) transport.send(q, encodeGroupId({key, id}));
          return id;
        }
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait_for(lock, group_wait, [&] { return group_ids.count(key) > 0 || lost_ranks.count(root) > 0 || stop || abort || lost0; });
        const auto it = group_ids.find(key);
        if (it != group_ids.end()) {
          std::string shared = std::move(it->second);
          group_ids.erase(it);
          return shared;
        }
        throw ConfigError("rank " + std::to_string(me) + ": the id of collective group " + key + " did not come from rank " +
                          std::to_string(root) +
                          (lost_ranks.count(root) > 0 ? " (it was lost)"
                                                      : stop || abort || lost0 ? " (the run stopped)" : " (timed out)"));
      });
      options.execution->start(config, by_gpu, queue, clock);
    }
    for (const HostShard* s : store->shards())
      if (s->held) hello.shards.push_back({s->model, s->shard, s->bytes, s->checksum});
  } catch (const std::exception& e) {
    hello.error = e.what();
  }
  ready = hello.error.empty();
  transport.send(0, encodeHello(hello));

  // Device events back to rank 0, as they come; when serving, the tokens delivered so far go
  // first, so a part's tokens always reach rank 0 before its completion (its executor delivered
  // them before it pushed the completion), and a part's payloads are dropped once every part of
  // its batch here is done.
  auto forwardOnce = [&](const std::deque<DeviceEvent>& events) {
    if (tokens) {
      std::vector<TokenDelivery> delivered = tokens->take();
      if (!delivered.empty()) transport.send(0, encodeTokens(delivered));
    }
    for (const DeviceEvent& ev : events) {
      // The payloads go before the completion does: a session's next step (same batch id) may
      // come as soon as rank 0 sees it, and files them again.
      if (tokens && ev.kind == DeviceEvent::Kind::kExecDone) {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = served.find(ev.batch);
        if (it != served.end() && --it->second.parts == 0) {
          for (RequestId id : it->second.requests) tokens->erase(id);
          served.erase(it);
        }
      }
      transport.send(0, encodeEvent(ev));
    }
  };
  std::atomic<bool> forwarding{true};
  // Serving polls every 2 ms: a token waits at most that long.
  const auto poll = tokens ? std::chrono::milliseconds(2) : std::chrono::milliseconds(50);
  std::thread forward([&] {
    while (forwarding) forwardOnce(queue.waitUntil(std::chrono::steady_clock::now() + poll));
  });
  ScopeExit join_forward([&] {
    forwarding = false;
    if (forward.joinable()) forward.join();
  });

  int code = 0;
  {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait(lock, [&] { return stop || abort || lost0; });
    if (lost0) {
      log << "rank " << me << ": rank 0 is gone (" << lost_reason << "); stopping\n";
      code = 1;
    } else if (abort) {
      code = 1;
    }
  }
  if (!hello.error.empty()) code = 2;
  // Leaving without rank 0 (or aborted): groups shared with other ranks may never complete a
  // collective again; abort them so the workers can finish.
  if (code != 0 && options.execution) {
    std::vector<GpuId> others;
    for (int g = 0; g < layout.total_gpus; ++g)
      if (layout.owner(g) != me) others.push_back(g);
    if (!others.empty()) options.execution->gpusLost(others);
  }
  // Finish queued work (its events still go back), then say stopped.
  if (options.execution) options.execution->stop();
  for (auto& d : devices) d->stop();
  forwarding = false;
  if (forward.joinable()) forward.join();
  forwardOnce(queue.takeAll());
  if (code == 0) transport.send(0, encodeSignal(MsgType::kStopped));
  transport.stop();
  devices.clear();
  return code;
}

}  // namespace computron::runtime::rank
