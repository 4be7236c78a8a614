// The runtime's own kernels (launch wrappers; they return the launch status for CUDA_CHECK).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace computron::runtime {

// Adds the checksum of [data, data + bytes) (a shard image, 16-byte aligned) to *out.
cudaError_t launchChecksum(const void* data, std::int64_t bytes, unsigned long long* out, int sm_count,
                           cudaStream_t stream);
// PLACEHOLDER execution: occupies the GPU (one warp) for `ns` nanoseconds of its global timer.
cudaError_t launchPlaceholder(std::int64_t ns, cudaStream_t stream);
// Injected corruption (runtime/fault_plan.h): flips bits of the byte at `byte` in device memory.
cudaError_t launchFlipByte(void* byte, cudaStream_t stream);

}  // namespace computron::runtime
