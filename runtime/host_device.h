// The host-memory device: a "GPU" whose memory is a host mapping and whose copy engine is
// memcpy on the device's own worker thread. It takes the same jobs as the CUDA device, so the
// backend's bookkeeping, concurrency and error paths run in CI without a GPU (and under the
// sanitizers). Faults come from a FaultPlan (runtime/fault_plan.h), shared with the CUDA device;
// tests may also fail or corrupt single paths through the hooks below.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <variant>

#include "runtime/device.h"
#include "runtime/fault_plan.h"
#include "runtime/job_queue.h"

namespace computron::runtime {

struct HostDeviceOptions {
  // Returns an error message to make this path fail after moving half of its chunks.
  std::function<std::optional<std::string>(const PathJob&)> fail_path;
  // Returns true to flip a byte of the path's first chunk after copying it (checksum mismatch).
  std::function<bool(const PathJob&)> corrupt_path;
  // Injected faults (replay --inject, a scenario's faults): failed and corrupt loads, failed
  // batches, stalls. Shared by every device of the run.
  std::shared_ptr<FaultPlan> faults;
  Nanos chunk_delay = 0;   // extra time per chunk, to stretch loads so tests see overlap
  int staging_slots = 2;   // relay staging buffers (each one chunk)
};

class HostDevice final : public Device {
 public:
  HostDevice(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
             const Clock& clock, HostDeviceOptions options);
  ~HostDevice() override;

  GpuId id() const override { return gpu_; }
  std::string describe() const override;
  void connect(const std::vector<Device*>& devices) override { devices_ = devices; }
  void submit(PathJob job) override { enqueue(std::move(job)); }
  void submit(VerifyJob job) override { enqueue(job); }
  void submit(ExecJob job) override { enqueue(std::move(job)); }
  void submit(RelocateJob job) override { enqueue(std::move(job)); }
  void stop() override;
  std::byte* poolBase() override { return pool_; }

 private:
  using Job = std::variant<PathJob, VerifyJob, ExecJob, RelocateJob>;
  void enqueue(Job job);
  void run();
  void runPath(const PathJob& job);
  void runVerify(const VerifyJob& job);
  void runExec(const ExecJob& job);
  void runRelocate(const RelocateJob& job);
  void delay(Nanos ns);

  GpuId gpu_;
  std::int64_t pool_bytes_;
  std::int64_t chunk_bytes_;
  CompletionQueue& queue_;
  const Clock& clock_;
  HostDeviceOptions options_;
  std::byte* pool_ = nullptr;
  std::vector<std::vector<std::byte>> staging_;
  std::vector<Device*> devices_;

  JobQueue<Job> jobs_{"host device"};
  std::thread worker_;
};

class HostDeviceFactory final : public DeviceFactory {
 public:
  HostDeviceFactory(int devices, HostDeviceOptions options = {}) : devices_(devices), options_(std::move(options)) {}
  std::string name() const override { return "host"; }
  int deviceCount() const override { return devices_; }
  HostMemoryPinner* pinner() override { return nullptr; }
  std::unique_ptr<Device> create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
                                 const Clock& clock) override {
    return std::make_unique<HostDevice>(gpu, pool_bytes, chunk_bytes, queue, clock, options_);
  }

 private:
  int devices_;
  HostDeviceOptions options_;
};

}  // namespace computron::runtime
