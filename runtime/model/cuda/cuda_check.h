// One checking macro per library, for the whole runtime (the swap engine's copies and the
// decoders alike): a failed CUDA, cuBLAS or NCCL call throws DeviceError naming the call, the
// file, the line and the library's error. CUDA's last error is cleared first so the next check
// does not report a stale failure.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#if COMPUTRON_HAVE_NCCL
#include <nccl.h>
#endif

namespace computron::model {

class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throwDeviceError(const char* library, const char* call, const std::string& what, const char* file,
                                          int line) {
  throw DeviceError(std::string(library) + " call `" + call + "` failed at " + file + ":" + std::to_string(line) + ": " + what);
}

}  // namespace computron::model

#define CUDA_CHECK(call)                                                                                   \
  do {                                                                                                     \
    cudaError_t computron_status_ = (call);                                                                \
    if (computron_status_ != cudaSuccess) {                                                                \
      (void)cudaGetLastError();                                                                            \
      ::computron::model::throwDeviceError("CUDA", #call,                                                  \
                                           std::string(cudaGetErrorName(computron_status_)) + " (" +       \
                                               cudaGetErrorString(computron_status_) + ")",                \
                                           __FILE__, __LINE__);                                            \
    }                                                                                                      \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, not at the next call.
#define CUDA_CHECK_LAUNCH(what) CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                                       \
  do {                                                                                                           \
    cublasStatus_t computron_status_ = (call);                                                                   \
    if (computron_status_ != CUBLAS_STATUS_SUCCESS)                                                              \
      ::computron::model::throwDeviceError("cuBLAS", #call, cublasGetStatusString(computron_status_), __FILE__, \
                                           __LINE__);                                                            \
  } while (0)

#if COMPUTRON_HAVE_NCCL
#define NCCL_CHECK(call)                                                                                     \
  do {                                                                                                       \
    ncclResult_t computron_status_ = (call);                                                                 \
    if (computron_status_ != ncclSuccess)                                                                    \
      ::computron::model::throwDeviceError("NCCL", #call, ncclGetErrorString(computron_status_), __FILE__, \
                                           __LINE__);                                                        \
  } while (0)
#endif
