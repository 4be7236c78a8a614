// Every CUDA runtime call goes through CUDA_CHECK: a failure throws CudaError naming the call, the
// file and the line, after clearing the (non-sticky) error so the next call starts clean.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace computron::runtime {

class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

inline void cudaCheck(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  throw CudaError(status, std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

}  // namespace computron::runtime

#define CUDA_CHECK(call) ::computron::runtime::cudaCheck((call), #call, __FILE__, __LINE__)
