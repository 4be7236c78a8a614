#include "runtime/host_device.h"

#include <sys/mman.h>

#include <cstring>
#include <stdexcept>

namespace computron::runtime {

HostDevice::HostDevice(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
                       const Clock& clock, HostDeviceOptions options)
    : gpu_(gpu), pool_bytes_(pool_bytes), chunk_bytes_(chunk_bytes), queue_(queue), clock_(clock),
      options_(std::move(options)) {
  if (pool_bytes_ > 0) {
    // Reserved, not touched: only the pages loads write become resident.
    void* p = ::mmap(nullptr, static_cast<std::size_t>(pool_bytes_), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("host device " + std::to_string(gpu) + ": pool mapping failed");
    pool_ = static_cast<std::byte*>(p);
  }
  for (int i = 0; i < std::max(1, options_.staging_slots); ++i) {
    staging_.emplace_back(static_cast<std::size_t>(chunk_bytes_));
  }
  worker_ = std::thread([this] { run(); });
}

HostDevice::~HostDevice() {
  stop();
  if (pool_ != nullptr) ::munmap(pool_, static_cast<std::size_t>(pool_bytes_));
}

std::string HostDevice::describe() const {
  return "host-memory device " + std::to_string(gpu_) + " (memcpy, pool " +
         std::to_string(pool_bytes_ / kMiB) + " MiB)";
}

void HostDevice::enqueue(Job job) { jobs_.push(std::move(job)); }

void HostDevice::stop() {
  jobs_.stop();
  if (worker_.joinable()) worker_.join();
}

void HostDevice::delay(Nanos ns) { jobs_.sleepUnlessStopped(ns); }

void HostDevice::run() {
  Job job;
  while (jobs_.pop(job)) {
    if (options_.faults)
      if (const Nanos stall = options_.faults->stallBefore(gpu_); stall > 0) delay(stall);  // an injected stall
    std::visit(
        [this](const auto& j) {
          using T = std::decay_t<decltype(j)>;
          if constexpr (std::is_same_v<T, PathJob>) runPath(j);
          if constexpr (std::is_same_v<T, VerifyJob>) runVerify(j);
          if constexpr (std::is_same_v<T, ExecJob>) runExec(j);
          if constexpr (std::is_same_v<T, RelocateJob>) runRelocate(j);
        },
        job);
  }
}

void HostDevice::runPath(const PathJob& job) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kPathProgress;
  ev.op = job.op;
  ev.path = job.path;
  ev.gpu = gpu_;
  std::optional<std::string> failure;
  if (options_.fail_path) failure = options_.fail_path(job);
  if (options_.faults && !failure) failure = options_.faults->failPath(job);
  const bool corrupt = options_.corrupt_path && options_.corrupt_path(job);
  const std::size_t fail_after = failure ? job.chunks.size() / 2 : job.chunks.size();
  if (job.target < 0 || static_cast<std::size_t>(job.target) >= devices_.size()) {
    failure = "host device: no device " + std::to_string(job.target);
  }
  std::byte* dst_base = failure ? nullptr : devices_[static_cast<std::size_t>(job.target)]->poolBase() + job.dst_offset;
  std::size_t notify = 0;
  std::size_t slot = 0;
  for (std::size_t c = 0; c < job.chunks.size() && dst_base != nullptr; ++c) {
    if (c == fail_after) break;
    const PlanChunk& ch = job.chunks[c];
    const auto n = static_cast<std::size_t>(ch.bytes);
    switch (job.kind) {
      case PathKind::kDirect:
        std::memcpy(dst_base + ch.offset, job.host + ch.offset, n);
        break;
      case PathKind::kRelay: {
        // Over this device's link into a staging buffer, then "NVLink" to the target.
        std::byte* stage = staging_[slot].data();
        slot = (slot + 1) % staging_.size();
        std::memcpy(stage, job.host + ch.offset, n);
        std::memcpy(dst_base + ch.offset, stage, n);
        break;
      }
      case PathKind::kFromDevice:
        std::memcpy(dst_base + ch.offset, pool_ + job.src_offset + ch.offset, n);
        break;
    }
    if (corrupt && c == 0) dst_base[ch.offset] ^= std::byte{0x5A};
    delay(options_.chunk_delay);
    while (notify < job.notify.size() && job.notify[notify].after_chunk == static_cast<int>(c)) {
      DeviceEvent progress = ev;
      progress.segment = job.notify[notify].covered_segment;
      progress.final = notify + 1 == job.notify.size();
      progress.time = clock_.now();
      queue_.push(std::move(progress));
      ++notify;
    }
  }
  if (failure || (dst_base == nullptr)) {
    ev.final = true;
    ev.ok = false;
    ev.error = failure.value_or("host device: path could not start");
    ev.time = clock_.now();
    queue_.push(std::move(ev));
  } else if (job.chunks.empty()) {
    ev.final = true;
    ev.segment = -1;
    ev.time = clock_.now();
    queue_.push(std::move(ev));
  }
}

void HostDevice::runVerify(const VerifyJob& job) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kVerifyDone;
  ev.op = job.op;
  ev.gpu = gpu_;
  // An injected corrupt load: one byte of the extent flipped after the copy, before the check.
  if (options_.faults && options_.faults->takeCorruption(job.op) && job.bytes > 0) pool_[job.offset] ^= std::byte{0x5A};
  ev.checksum = checksumRange(pool_ + job.offset, job.bytes);
  ev.time = clock_.now();
  queue_.push(std::move(ev));
}

void HostDevice::runExec(const ExecJob& job) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kExecDone;
  ev.batch = job.batch;
  ev.path = job.part;
  ev.gpu = gpu_;
  ev.start = clock_.now();
  for (Nanos phase : job.phase_ns) {
    delay(phase);  // PLACEHOLDER execution: a fixed cost per phase
    ev.step_end.push_back(clock_.now());
  }
  ev.time = clock_.now();
  if (options_.faults) {
    if (auto failure = options_.faults->failBatch(job.model, job.part)) {
      ev.ok = false;
      ev.error = *failure;
    }
  }
  queue_.push(std::move(ev));
}

void HostDevice::runRelocate(const RelocateJob& job) {
  for (const auto& m : job.moves) std::memmove(pool_ + m.to, pool_ + m.from, static_cast<std::size_t>(m.bytes));
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kRelocateDone;
  ev.op = job.token;
  ev.gpu = gpu_;
  ev.time = clock_.now();
  queue_.push(std::move(ev));
}

}  // namespace computron::runtime
