// Collectives of a tensor-parallel group inside one process, over peer access (NVLink): an
// all-reduce (sum) and an all-gather of fp32 buffers, one kernel each, for the small messages of a
// decode step (batch x hidden x 4 bytes), where NCCL's fixed cost dominates.
//
// One-shot: every rank copies its input into its own staging buffer, signals every peer through
// a flag in the peer's memory and waits for theirs, then reads all ranks' staging buffers (its own
// included) and sums them in rank order, so every rank computes bit-identical results. Each block
// of the kernel owns a contiguous segment and synchronises with the same block of the peers only.
// Staging is double-buffered by the parity of a call counter kept in device memory and advanced
// by the kernel itself: a captured CUDA graph replays the calls correctly, and a rank reusing a
// buffer two calls later knows every peer has left it (the peer reached the call in between).
//
// Failure: a rank that never arrives makes the waiting ranks give up after a timeout (or at once
// when any rank calls abort()); they set the group's error word, skip their reduction and return,
// and every later call returns at once. The host sees failed() after synchronising and reports
// the pass as failed. The ranks' counters may then differ, so the group is not used again until
// reset() at a point where every rank is idle; until then the executors refuse passes (a rank
// switching to NCCL alone would wait for peers that never call it).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace computron::model {

// COMPUTRON_PEER_COLLECTIVES=0 turns the peer path off (NCCL for everything), =1 on; unset:
// `by_default`. The model library (ModelGroup) uses it by default; the serving runtime does not:
// on 2 x H200, replays of the seed's swapping workloads ran 4-9% slower in mean latency with it
// (bench/results/tp-decode-h200x2-2026-12-01.md).
bool peerCollectivesEnabled(bool by_default);
// All-reduces up to this many bytes run over peer access, larger ones on NCCL
// (COMPUTRON_PEER_MAX_BYTES; default kDefaultPeerAllReduceBytes: on 2 x H200 the peer all-reduce
// takes 0.51-0.83x NCCL's time up to 4 MiB and the same at 8 MiB,
// bench/results/tp-decode-h200x2-2026-12-01.md).
inline constexpr std::int64_t kDefaultPeerAllReduceBytes = 4 << 20;
std::int64_t peerAllReduceLimit();
// How long a rank waits in a collective for the others (COMPUTRON_PEER_TIMEOUT_S, default 300 s).
// It covers the ranks' skew on the host too: in the serving runtime a GPU's worker may still be
// busy with another model's batch when its peer starts this one.
inline constexpr double kDefaultPeerTimeoutSeconds = 300.0;
double peerTimeoutSeconds();

class PeerGroup {
 public:
  static constexpr int kMaxRanks = 8;
  static constexpr int kMaxBlocks = 32;

  // Null when the devices cannot all reach each other by peer access (then NCCL does the work),
  // or when there is only one. Enables peer access between every pair. `max_bytes`: the largest
  // message of one call (per rank's input).
  // timeout_seconds <= 0: peerTimeoutSeconds(). Null also when the memory cannot be allocated.
  static std::shared_ptr<PeerGroup> create(const std::vector<int>& devices, std::int64_t max_bytes,
                                           double timeout_seconds = 0);
  ~PeerGroup();
  PeerGroup(const PeerGroup&) = delete;
  PeerGroup& operator=(const PeerGroup&) = delete;

  int size() const { return static_cast<int>(devices_.size()); }
  std::int64_t maxBytes() const { return max_bytes_; }
  int device(int rank) const { return devices_[static_cast<std::size_t>(rank)]; }

  // data[count] = sum over ranks of data[count], in place; on `stream` of rank's device.
  void allReduceSum(int rank, float* data, std::int64_t count, cudaStream_t stream);
  // out[r * count + i] = rank r's in[i]; out must not overlap in.
  void allGather(int rank, const float* in, float* out, std::int64_t count, cudaStream_t stream);

  // Whether a call timed out or was aborted (read after synchronising the stream).
  bool failed() const;
  // Makes every waiting rank give up now; the group then reports failed().
  void abort();
  // Whether this group may still be used: false once failed() was seen by usable() or abort().
  bool usable();
  // Makes a failed group usable again: waits for every rank's device, clears the flags, the call
  // counters and the error. Only while no rank has a call queued or running.
  void reset();

 private:
  PeerGroup() = default;
  void launch(int rank, const float* in, float* out, std::int64_t count, bool gather, cudaStream_t stream);

  std::vector<int> devices_;
  std::int64_t max_bytes_ = 0;
  std::int64_t timeout_ns_ = 0;
  // Per rank, on its device: staging [2][max_bytes], flags [kMaxBlocks][kMaxRanks] (u64), then the
  // call counter and the finished-blocks ticket.
  std::vector<std::byte*> memory_;
  std::vector<float*> staging_;
  std::vector<unsigned long long*> flags_;
  std::vector<unsigned long long*> counter_;
  std::vector<unsigned int*> ticket_;
  // Pinned, mapped host words: [0] error (set by a kernel), [1] abort (set by the host).
  volatile int* host_words_ = nullptr;
  int* device_words_ = nullptr;
  std::atomic<bool> broken_{false};
};

}  // namespace computron::model
