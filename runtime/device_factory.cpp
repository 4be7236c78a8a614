#include "runtime/device_factory.h"

#include "runtime/host_device.h"
#ifdef COMPUTRON_HAVE_CUDA
#include "runtime/cuda/cuda_device.h"
#endif

namespace computron::runtime {

bool cudaBuiltIn() {
#ifdef COMPUTRON_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<DeviceFactory> makeDeviceFactory(const std::string& kind, int host_devices) {
  if (kind == "host") return std::make_unique<HostDeviceFactory>(host_devices);
  if (kind == "cuda") {
#ifdef COMPUTRON_HAVE_CUDA
    return std::make_unique<CudaDeviceFactory>();
#else
    throw ConfigError(
        "--device cuda: CUDA is not built into this binary (configure with nvcc available, or "
        "-DCOMPUTRON_CUDA=ON); the host-memory device works: --device host");
#endif
  }
  throw ConfigError("--device: expected cuda or host, got '" + kind + "'");
}

}  // namespace computron::runtime
