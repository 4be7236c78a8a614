#include "runtime/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>

#include "runtime/model/cuda/cuda_check.h"
#include "runtime/cuda/kernels.h"

namespace computron::runtime {
namespace {

std::int64_t steadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Notice {
  CompletionQueue* queue;
  const Clock* clock;
  DeviceEvent event;
  const unsigned long long* checksum = nullptr;  // read when the notice fires (verify)
};

void CUDART_CB fireNotice(void* data) {
  auto* n = static_cast<Notice*>(data);
  n->event.time = n->clock->now();
  if (n->checksum != nullptr) n->event.checksum = *n->checksum;
  n->queue->push(std::move(n->event));
  delete n;
}

// Execution phases: the host function after phase i stamps its end; the last one pushes.
struct ExecTrack {
  CompletionQueue* queue;
  const Clock* clock;
  DeviceEvent event;
  std::size_t phases = 0;
};
struct ExecMark {
  ExecTrack* track;
  int phase;  // -1 start, else phase index
};

void CUDART_CB fireExecMark(void* data) {
  auto* mark = static_cast<ExecMark*>(data);
  ExecTrack* t = mark->track;
  const Nanos now = t->clock->now();
  if (mark->phase < 0) {
    t->event.start = now;
  } else {
    t->event.step_end.push_back(now);
  }
  const bool last = mark->phase == static_cast<int>(t->phases) - 1;
  delete mark;
  if (last) {
    t->event.time = now;
    t->queue->push(std::move(t->event));
    delete t;
  }
}

cudaStream_t makeStream() {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

}  // namespace

CudaDevice::CudaDevice(GpuId gpu, int ordinal, std::int64_t pool_bytes, std::int64_t chunk_bytes,
                       CompletionQueue& queue, const Clock& clock, CudaDeviceOptions options)
    : gpu_(gpu), ordinal_(ordinal), pool_bytes_(pool_bytes), chunk_bytes_(chunk_bytes), queue_(queue), clock_(clock),
      options_(options) {
  if (const char* window = std::getenv("COMPUTRON_LOAD_WINDOW")) options_.load_window_chunks = std::atoi(window);
  if (const char* trace = std::getenv("COMPUTRON_LOAD_TRACE")) trace_ = std::atoi(trace) != 0;
  if (const char* on_copy = std::getenv("COMPUTRON_RESUME_ON_COPY_STREAM")) resume_on_copy_stream_ = std::atoi(on_copy) != 0;
  CUDA_CHECK(cudaSetDevice(ordinal_));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
  name_ = prop.name;
  sm_count_ = prop.multiProcessorCount;
  // The only device allocations: the weight pool, staging slots and checksum slots, all at start.
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&pool_), static_cast<std::size_t>(pool_bytes_)));
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&staging_),
                        static_cast<std::size_t>(chunk_bytes_) * static_cast<std::size_t>(options_.staging_slots)));
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&checksum_dev_),
                        sizeof(unsigned long long) * static_cast<std::size_t>(options_.checksum_slots)));
  CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&checksum_host_),
                           sizeof(unsigned long long) * static_cast<std::size_t>(options_.checksum_slots),
                           cudaHostAllocDefault));
  for (int i = 0; i < options_.staging_slots; ++i) {
    cudaEvent_t a = nullptr, b = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&a, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&b, cudaEventDisableTiming));
    slot_filled_.push_back(a);
    slot_free_.push_back(b);
  }
  load_ = makeStream();
  relay_h2d_ = makeStream();
  relay_p2p_ = makeStream();
  verify_ = makeStream();
  compute_ = makeStream();
  notify_load_ = makeStream();
  notify_relay_ = makeStream();
  worker_ = std::thread([this] { run(); });
}

CudaDevice::~CudaDevice() {
  stop();
  // Teardown: errors are ignored, there is nobody left to report them to.
  cudaSetDevice(ordinal_);
  for (cudaStream_t s : {load_, relay_h2d_, relay_p2p_, verify_, compute_, notify_load_, notify_relay_}) {
    if (s != nullptr) cudaStreamDestroy(s);
  }
  for (auto e : slot_filled_) cudaEventDestroy(e);
  for (auto e : slot_free_) cudaEventDestroy(e);
  cudaFreeHost(checksum_host_);
  cudaFree(checksum_dev_);
  cudaFree(staging_);
  cudaFree(pool_);
}

std::string CudaDevice::describe() const {
  return name_ + " (CUDA device " + std::to_string(ordinal_) + ", pool " + std::to_string(pool_bytes_ / kMiB) +
         " MiB, " + std::to_string(options_.staging_slots) + " staging slots of " + std::to_string(chunk_bytes_ / kMiB) +
         " MiB)";
}

void CudaDevice::connect(const std::vector<Device*>& devices) {
  peers_.clear();
  CUDA_CHECK(cudaSetDevice(ordinal_));
  for (Device* d : devices) {
    auto* peer = dynamic_cast<CudaDevice*>(d);
    peers_.push_back(peer);
    if (peer == nullptr || peer == this) continue;
    int can = 0;
    CUDA_CHECK(cudaDeviceCanAccessPeer(&can, ordinal_, peer->ordinal_));
    if (!can) continue;  // peer copies still work, staged through the host
    const cudaError_t e = cudaDeviceEnablePeerAccess(peer->ordinal_, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      (void)cudaGetLastError();
    } else {
      CUDA_CHECK(e);
    }
  }
}

void CudaDevice::enqueue(Job job) { jobs_.push(std::move(job)); }

void CudaDevice::stop() {
  jobs_.stop();
  if (worker_.joinable()) worker_.join();
  // Wait for everything issued, host functions included, so no notice outlives the device.
  if (cudaSetDevice(ordinal_) == cudaSuccess) cudaDeviceSynchronize();
}

void CudaDevice::run() {
  if (cudaSetDevice(ordinal_) != cudaSuccess) return;
  Job job;
  while (jobs_.pop(job)) {
    const auto* path = std::get_if<PathJob>(&job);
    const bool continuation = path != nullptr && path->first_chunk > 0;
    // A continuation of a path that already failed: its report is out, nothing more to do.
    if (continuation && failed_paths_.erase({path->op, path->path}) > 0) continue;
    // Injected stalls count the jobs the backend submitted, not windowed continuations.
    if (options_.faults && !continuation)
      if (const Nanos stall = options_.faults->stallBefore(gpu_); stall > 0) jobs_.sleepUnlessStopped(stall);
    try {
      std::visit(
          [this](const auto& j) {
            using T = std::decay_t<decltype(j)>;
            if constexpr (std::is_same_v<T, PathJob>) runPath(j);
            if constexpr (std::is_same_v<T, VerifyJob>) runVerify(j);
            if constexpr (std::is_same_v<T, ExecJob>) runExec(j);
            if constexpr (std::is_same_v<T, RelocateJob>) runRelocate(j);
          },
          job);
    } catch (const std::exception& e) {
      if (path != nullptr) failedPath(*path);
      failJob(job, e.what());
    }
    // A broken context never runs the host function that would queue the active load's next
    // window: the loads parked behind it go now (and fail on their first CUDA call).
    if (window_active_ && !parked_loads_.empty()) {
      const cudaError_t state = cudaStreamQuery(load_);
      if (state != cudaSuccess && state != cudaErrorNotReady) window_active_ = false;
    }
    startParkedLoads();
  }
}

void CudaDevice::failedPath(const PathJob& job) {
  if (job.kind != PathKind::kDirect) return;
  // Its continuation may already be queued (the host function ran before the failure): it is
  // dropped when it arrives, so the loads parked behind this one start now, in order.
  if (window_active_) failed_paths_.insert({job.op, job.path});
  window_active_ = false;
}

void CudaDevice::startParkedLoads() {
  while (!window_active_ && !parked_loads_.empty()) {
    PathJob next = std::move(parked_loads_.front());
    parked_loads_.pop_front();
    try {
      runPath(next);
    } catch (const std::exception& e) {
      failedPath(next);
      failJob(Job(std::move(next)), e.what());
    }
  }
}

void CudaDevice::failJob(const Job& job, const std::string& error) {
  // Work issued before the failure may still run; the failure report waits behind it on the
  // job's streams where there are any, so the backend frees nothing still being written.
  DeviceEvent ev;
  ev.ok = false;
  ev.error = error;
  ev.gpu = gpu_;
  cudaStream_t after = nullptr;
  cudaStream_t via = nullptr;
  if (const auto* p = std::get_if<PathJob>(&job)) {
    ev.kind = DeviceEvent::Kind::kPathProgress;
    ev.op = p->op;
    ev.path = p->path;
    ev.final = true;
    after = p->kind == PathKind::kDirect ? load_ : relay_p2p_;
    via = p->kind == PathKind::kDirect ? notify_load_ : notify_relay_;
  } else if (const auto* v = std::get_if<VerifyJob>(&job)) {
    ev.kind = DeviceEvent::Kind::kVerifyDone;
    ev.op = v->op;
  } else if (const auto* x = std::get_if<ExecJob>(&job)) {
    ev.kind = DeviceEvent::Kind::kExecDone;
    ev.batch = x->batch;
    ev.path = x->part;
    ev.start = clock_.now();
  } else if (const auto* r = std::get_if<RelocateJob>(&job)) {
    ev.kind = DeviceEvent::Kind::kRelocateDone;
    ev.op = r->token;
  }
  if (after != nullptr) {
    try {
      notifyAfter(after, via, ev);
      return;
    } catch (const std::exception&) {
      // The context is broken; report at once.
    }
  }
  ev.time = clock_.now();
  queue_.push(std::move(ev));
}

void CudaDevice::notifyAfter(cudaStream_t stream, cudaStream_t notify, DeviceEvent event) {
  cudaEvent_t done = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, stream));
  CUDA_CHECK(cudaStreamWaitEvent(notify, done, 0));
  // Destroying a recorded event is allowed: its resources go once the device has passed it.
  CUDA_CHECK(cudaEventDestroy(done));
  auto* notice = new Notice{&queue_, &clock_, std::move(event)};
  const cudaError_t e = cudaLaunchHostFunc(notify, fireNotice, notice);
  if (e != cudaSuccess) delete notice;
  CUDA_CHECK(e);
}

// A host callback (no CUDA calls allowed): the rest of a windowed path goes back on the worker's
// queue. A device that is stopping takes no more jobs; its load is abandoned with it.
void CUDART_CB CudaDevice::queueResume(void* data) {
  std::unique_ptr<Resume> resume(static_cast<Resume*>(data));
  try {
    if (resume->device->trace_) {
      std::lock_guard<std::mutex> lock(resume->device->trace_mutex_);
      resume->device->trace_marks_[{resume->job.op, resume->job.path, resume->job.first_chunk}] = {resume->issued_ns, steadyNs()};
    }
    resume->device->jobs_.push(std::move(resume->job));
  } catch (const std::exception&) {
  }
}

void CudaDevice::runPath(const PathJob& job) {
  // A new windowed load waits behind the one being issued (startParkedLoads). So while windows are
  // active, a direct job that runs is that load's continuation, and a failure here is its own.
  if (job.kind == PathKind::kDirect && options_.load_window_chunks >= 2 && job.first_chunk == 0 && window_active_) {
    parked_loads_.push_back(job);
    return;
  }
  if (job.target < 0 || static_cast<std::size_t>(job.target) >= peers_.size() ||
      peers_[static_cast<std::size_t>(job.target)] == nullptr) {
    throw std::runtime_error("CUDA device: no target GPU " + std::to_string(job.target));
  }
  CudaDevice& target = *peers_[static_cast<std::size_t>(job.target)];
  std::byte* dst = target.pool_ + job.dst_offset;
  const std::int64_t issue_start_ns = trace_ ? steadyNs() : 0;
  DeviceEvent progress;
  progress.kind = DeviceEvent::Kind::kPathProgress;
  progress.op = job.op;
  progress.path = job.path;
  progress.gpu = gpu_;
  std::size_t notify = 0;
  const bool direct = job.kind == PathKind::kDirect;
  cudaStream_t copy_stream = direct ? load_ : relay_p2p_;
  cudaStream_t notify_stream = direct ? notify_load_ : notify_relay_;
  // An injected failed load: half of the chunks are issued, then the path fails as a copy error
  // does (run() reports it through failJob, after the issued copies).
  std::optional<std::string> injected;
  if (job.first_chunk == 0 && options_.faults) injected = options_.faults->failPath(job);
  std::size_t issue = injected ? job.chunks.size() / 2 : job.chunks.size();
  // Windowed issue (direct loads): this job issues `window` chunks; a host callback placed after
  // the first half of them queues the rest of the path as a new job once that half is copied, so
  // the copy engine always has half a window to a window queued and the worker never blocks.
  const std::size_t window = static_cast<std::size_t>(std::max(0, options_.load_window_chunks));
  std::size_t resume_after = issue;  // the chunk after which the continuation is queued
  if (direct && !injected && window >= 2 && issue - job.first_chunk > window) {
    resume_after = job.first_chunk + window / 2 - 1;
    issue = job.first_chunk + window;
  }
  // This load is being issued in windows until its last one is on the stream.
  if (direct && window >= 2) window_active_ = issue < job.chunks.size() && !injected;
  while (notify < job.notify.size() && job.notify[notify].after_chunk < static_cast<int>(job.first_chunk)) ++notify;
  for (std::size_t c = job.first_chunk; c < issue; ++c) {
    const PlanChunk& ch = job.chunks[c];
    const auto n = static_cast<std::size_t>(ch.bytes);
    switch (job.kind) {
      case PathKind::kDirect:
        CUDA_CHECK(cudaMemcpyAsync(dst + ch.offset, job.host + ch.offset, n, cudaMemcpyHostToDevice, load_));
        if (c == resume_after && issue < job.chunks.size()) {
          auto* resume = new Resume{this, job, issue_start_ns};
          resume->job.first_chunk = issue;
          // On the notify stream, behind an event: the copy stream never waits for the
          // callback, so the window's second half keeps the copy engine busy while the host
          // function (whose latency grows while the GPU computes) queues the next window.
          cudaStream_t via = resume_on_copy_stream_ ? load_ : notify_load_;
          if (via != load_) {
            cudaEvent_t half = nullptr;
            CUDA_CHECK(cudaEventCreateWithFlags(&half, cudaEventDisableTiming));
            CUDA_CHECK(cudaEventRecord(half, load_));
            CUDA_CHECK(cudaStreamWaitEvent(via, half, 0));
            CUDA_CHECK(cudaEventDestroy(half));
          }
          const cudaError_t e = cudaLaunchHostFunc(via, queueResume, resume);
          if (e != cudaSuccess) delete resume;
          CUDA_CHECK(e);
        }
        break;
      case PathKind::kRelay: {
        const int k = next_slot_;
        next_slot_ = (next_slot_ + 1) % options_.staging_slots;
        std::byte* slot = staging_ + static_cast<std::int64_t>(k) * chunk_bytes_;
        CUDA_CHECK(cudaStreamWaitEvent(relay_h2d_, slot_free_[static_cast<std::size_t>(k)], 0));
        CUDA_CHECK(cudaMemcpyAsync(slot, job.host + ch.offset, n, cudaMemcpyHostToDevice, relay_h2d_));
        CUDA_CHECK(cudaEventRecord(slot_filled_[static_cast<std::size_t>(k)], relay_h2d_));
        CUDA_CHECK(cudaStreamWaitEvent(relay_p2p_, slot_filled_[static_cast<std::size_t>(k)], 0));
        CUDA_CHECK(cudaMemcpyPeerAsync(dst + ch.offset, target.ordinal_, slot, ordinal_, n, relay_p2p_));
        CUDA_CHECK(cudaEventRecord(slot_free_[static_cast<std::size_t>(k)], relay_p2p_));
        break;
      }
      case PathKind::kFromDevice:
        CUDA_CHECK(cudaMemcpyPeerAsync(dst + ch.offset, target.ordinal_, pool_ + job.src_offset + ch.offset, ordinal_,
                                       n, relay_p2p_));
        break;
    }
    while (notify < job.notify.size() && job.notify[notify].after_chunk == static_cast<int>(c)) {
      DeviceEvent ev = progress;
      ev.segment = job.notify[notify].covered_segment;
      ev.final = notify + 1 == job.notify.size();
      notifyAfter(copy_stream, notify_stream, std::move(ev));
      ++notify;
    }
  }
  if (trace_ && direct) {
    // This window's continuation carries its issue time; the callback adds when it ran.
    const std::int64_t end_ns = steadyNs();
    std::int64_t issued = 0, fired = 0;
    if (job.first_chunk > 0) {
      std::lock_guard<std::mutex> lock(trace_mutex_);
      auto it = trace_marks_.find({job.op, job.path, job.first_chunk});
      if (it != trace_marks_.end()) {
        std::tie(issued, fired) = it->second;
        trace_marks_.erase(it);
      }
    }
    std::fprintf(stderr,
                 "LOADTRACE {\"gpu\": %d, \"op\": %lld, \"path\": %d, \"first_chunk\": %zu, \"chunks\": %zu, \"issued_chunks\": %zu, "
                 "\"t_ms\": %.3f, \"callback_after_prev_issue_ms\": %.3f, \"worker_pickup_ms\": %.3f, \"issue_ms\": %.3f}\n",
                 static_cast<int>(gpu_), static_cast<long long>(job.op), job.path, job.first_chunk, job.chunks.size(),
                 issue - job.first_chunk, issue_start_ns / 1e6, fired > 0 ? (fired - issued) / 1e6 : -1.0,
                 fired > 0 ? (issue_start_ns - fired) / 1e6 : -1.0, (end_ns - issue_start_ns) / 1e6);
  }
  if (injected) throw std::runtime_error(*injected);
  if (job.chunks.empty() && job.first_chunk == 0) {
    DeviceEvent ev = progress;
    ev.final = true;
    notifyAfter(copy_stream, notify_stream, std::move(ev));
  }
}

void CudaDevice::runVerify(const VerifyJob& job) {
  // The copies are known complete (the backend saw every path finish), so no stream dependency.
  const int slot = next_checksum_;
  next_checksum_ = (next_checksum_ + 1) % options_.checksum_slots;
  unsigned long long* dev = checksum_dev_ + slot;
  unsigned long long* host = checksum_host_ + slot;
  // An injected corrupt load: one byte of the extent flipped in device memory after the copy,
  // so the checksum below finds it as it would a real corruption.
  if (options_.faults && options_.faults->takeCorruption(job.op) && job.bytes > 0)
    CUDA_CHECK(launchFlipByte(pool_ + job.offset, verify_));
  CUDA_CHECK(cudaMemsetAsync(dev, 0, sizeof(unsigned long long), verify_));
  CUDA_CHECK(launchChecksum(pool_ + job.offset, job.bytes, dev, sm_count_, verify_));
  CUDA_CHECK(cudaMemcpyAsync(host, dev, sizeof(unsigned long long), cudaMemcpyDeviceToHost, verify_));
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kVerifyDone;
  ev.op = job.op;
  ev.gpu = gpu_;
  auto* notice = new Notice{&queue_, &clock_, std::move(ev), host};
  const cudaError_t e = cudaLaunchHostFunc(verify_, fireNotice, notice);
  if (e != cudaSuccess) delete notice;
  CUDA_CHECK(e);
}

void CudaDevice::runExec(const ExecJob& job) {
  auto* track = new ExecTrack{&queue_, &clock_, DeviceEvent{}, job.phase_ns.size()};
  track->event.kind = DeviceEvent::Kind::kExecDone;
  track->event.batch = job.batch;
  track->event.path = job.part;
  track->event.gpu = gpu_;
  // An injected failed batch: the part runs, then reports failure (as the host device does).
  if (options_.faults) {
    if (auto failure = options_.faults->failBatch(job.model, job.part)) {
      track->event.ok = false;
      track->event.error = *failure;
    }
  }
  if (job.phase_ns.empty()) {
    track->event.start = track->event.time = clock_.now();
    queue_.push(std::move(track->event));
    delete track;
    return;
  }
  // Host functions on the compute stream stamp the start and each phase's end; the stream's
  // only work is this placeholder, so stalling it for a callback costs nothing real.
  CUDA_CHECK(cudaLaunchHostFunc(compute_, fireExecMark, new ExecMark{track, -1}));
  for (std::size_t i = 0; i < job.phase_ns.size(); ++i) {
    if (job.phase_ns[i] > 0) CUDA_CHECK(launchPlaceholder(job.phase_ns[i], compute_));
    CUDA_CHECK(cudaLaunchHostFunc(compute_, fireExecMark, new ExecMark{track, static_cast<int>(i)}));
  }
}

void CudaDevice::runRelocate(const RelocateJob& job) {
  // Moves go to lower offsets and may overlap their source: copy upwards in pieces no larger
  // than the distance, so no piece reads bytes an earlier piece of the same move wrote.
  for (const auto& m : job.moves) {
    const std::int64_t distance = m.from - m.to;
    const std::int64_t piece = std::min<std::int64_t>(distance, 256 * kMiB);
    for (std::int64_t off = 0; off < m.bytes; off += piece) {
      const std::int64_t n = std::min(piece, m.bytes - off);
      CUDA_CHECK(cudaMemcpyAsync(pool_ + m.to + off, pool_ + m.from + off, static_cast<std::size_t>(n),
                                 cudaMemcpyDeviceToDevice, load_));
    }
  }
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kRelocateDone;
  ev.op = job.token;
  ev.gpu = gpu_;
  notifyAfter(load_, notify_load_, std::move(ev));
}

void CudaHostPinner::pin(void* ptr, std::size_t bytes) {
  CUDA_CHECK(cudaHostRegister(ptr, bytes, cudaHostRegisterPortable));
}

void CudaHostPinner::unpin(void* ptr, std::size_t /*bytes*/) { CUDA_CHECK(cudaHostUnregister(ptr)); }

CudaDeviceFactory::CudaDeviceFactory(CudaDeviceOptions options) : options_(options) {
  CUDA_CHECK(cudaGetDeviceCount(&count_));
}

std::unique_ptr<Device> CudaDeviceFactory::create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes,
                                                  CompletionQueue& queue, const Clock& clock) {
  return std::make_unique<CudaDevice>(gpu, static_cast<int>(gpu) + options_.ordinal_shift, pool_bytes, chunk_bytes, queue, clock, options_);
}

}  // namespace computron::runtime
