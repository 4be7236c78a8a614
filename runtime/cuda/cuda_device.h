// The CUDA device: one worker thread per GPU issuing asynchronous work on its own streams.
//   load     host -> this GPU, chunked cudaMemcpyAsync from the pinned host store
//   relay    host -> staging slot on this GPU (its PCIe link), then peer copy over NVLink into
//            another GPU's extent; a ring of staging slots pipelines the two
//   compute  the placeholder fixed-cost kernel (`--execution placeholder`; real execution runs
//            the decoders through cuda/model_execution.*)
//   verify   the checksum kernel over a freshly loaded extent
// Progress is recorded as events on the copy streams; separate notify streams wait on those
// events and run a host function that pushes to the completion queue, so the copy streams never
// stall for a callback. The worker thread never blocks on the GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <tuple>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <variant>

#include "runtime/device.h"
#include "runtime/fault_plan.h"
#include "runtime/job_queue.h"

namespace computron::runtime {

struct CudaDeviceOptions {
  int staging_slots = 4;        // relay staging buffers, one chunk each
  int checksum_slots = 256;     // verifications in flight at most
  // Chunks a direct load's copies are issued ahead of the copy engine, the rest as those
  // complete (a host callback queues the next window as a job). Issuing a whole multi-gigabyte
  // load at once holds up other threads' kernel launches on the GPU until the copies drain: a
  // batch that starts during another model's load waits for that load
  // (bench/results/fidelity-stall-2026-12-01.md); 16 removes that wait. Windowed loads on one GPU
  // still go one after another (parked_loads_), as whole loads on the load stream did
  // (bench/results/fidelity-1gpu-2026-12-01.md). 0: the whole load at once.
  // COMPUTRON_LOAD_WINDOW sets it. Relay (multi-path) and device-to-device paths are issued whole.
  int load_window_chunks = 16;
  // Injected faults (replay --inject, a scenario's faults), shared with the model execution.
  std::shared_ptr<FaultPlan> faults;
  // GPU g is CUDA device g + ordinal_shift (a rank of a multi-process run, runtime/mpi/).
  int ordinal_shift = 0;
};

class CudaDevice final : public Device {
 public:
  CudaDevice(GpuId gpu, int ordinal, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
             const Clock& clock, CudaDeviceOptions options);
  ~CudaDevice() override;

  GpuId id() const override { return gpu_; }
  std::string describe() const override;
  void connect(const std::vector<Device*>& devices) override;
  void submit(PathJob job) override { enqueue(std::move(job)); }
  void submit(VerifyJob job) override { enqueue(job); }
  void submit(ExecJob job) override { enqueue(std::move(job)); }
  void submit(RelocateJob job) override { enqueue(std::move(job)); }
  void stop() override;
  std::byte* poolBase() override { return pool_; }
  int ordinal() const { return ordinal_; }

 private:
  using Job = std::variant<PathJob, VerifyJob, ExecJob, RelocateJob>;
  void enqueue(Job job);
  void run();
  void runPath(const PathJob& job);
  // The rest of a path issued in windows (load_window_chunks), queued by a host callback.
  struct Resume {
    CudaDevice* device;
    PathJob job;
    std::int64_t issued_ns = 0;  // when its window was issued (COMPUTRON_LOAD_TRACE)
  };
  // COMPUTRON_LOAD_TRACE=1: a line on stderr per window of a direct load (when it was issued,
  // when its continuation's callback ran, when the worker took it up, how long issuing took).
  bool trace_ = false;
  // COMPUTRON_RESUME_ON_COPY_STREAM=1: the continuation's host function on the copy stream itself
  // (the copies behind it wait for the callback), as before; for comparison.
  bool resume_on_copy_stream_ = false;
  std::mutex trace_mutex_;
  // (op, path, first chunk) of a queued continuation -> (its window's issue time, callback time)
  std::map<std::tuple<OpId, int, std::size_t>, std::pair<std::int64_t, std::int64_t>> trace_marks_;
  static void CUDART_CB queueResume(void* data);
  // Windowed loads go one after another, as whole loads on the load stream do: a direct load that
  // arrives while another is still being issued in windows waits here (worker thread only) and
  // starts behind that load's last window. Interleaving their windows would make both finish
  // late (two 26 GB loads on one link each took 945 ms instead of 466 + 932 ms).
  bool window_active_ = false;
  std::deque<PathJob> parked_loads_;
  // (op, path) of windowed loads that failed while their next window may still be queued.
  std::set<std::pair<OpId, int>> failed_paths_;
  // Runs the parked loads whose turn it is (after every job).
  void startParkedLoads();
  // After a path job failed: ends its windows (its queued continuation is dropped).
  void failedPath(const PathJob& job);
  void runVerify(const VerifyJob& job);
  void runExec(const ExecJob& job);
  void runRelocate(const RelocateJob& job);
  // Pushes `event` (time stamped then) once `stream`'s work so far is done, through `notify`.
  void notifyAfter(cudaStream_t stream, cudaStream_t notify, DeviceEvent event);
  void failJob(const Job& job, const std::string& error);

  GpuId gpu_;
  int ordinal_;
  std::int64_t pool_bytes_;
  std::int64_t chunk_bytes_;
  CompletionQueue& queue_;
  const Clock& clock_;
  CudaDeviceOptions options_;
  std::string name_;
  int sm_count_ = 1;
  std::byte* pool_ = nullptr;
  std::byte* staging_ = nullptr;
  unsigned long long* checksum_dev_ = nullptr;
  unsigned long long* checksum_host_ = nullptr;
  int next_checksum_ = 0;
  int next_slot_ = 0;
  std::vector<cudaEvent_t> slot_filled_, slot_free_;
  cudaStream_t load_ = nullptr, relay_h2d_ = nullptr, relay_p2p_ = nullptr, verify_ = nullptr, compute_ = nullptr;
  cudaStream_t notify_load_ = nullptr, notify_relay_ = nullptr;
  std::vector<CudaDevice*> peers_;

  JobQueue<Job> jobs_{"CUDA device"};
  std::thread worker_;
};

// Pins host memory for every device (cudaHostRegister, portable).
class CudaHostPinner final : public HostMemoryPinner {
 public:
  void pin(void* ptr, std::size_t bytes) override;
  void unpin(void* ptr, std::size_t bytes) override;
};

class CudaDeviceFactory final : public DeviceFactory {
 public:
  explicit CudaDeviceFactory(CudaDeviceOptions options = {});
  std::string name() const override { return "cuda"; }
  int deviceCount() const override { return count_; }
  HostMemoryPinner* pinner() override { return &pinner_; }
  std::unique_ptr<Device> create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
                                 const Clock& clock) override;

 private:
  CudaDeviceOptions options_;
  int count_ = 0;
  CudaHostPinner pinner_;
};

}  // namespace computron::runtime
