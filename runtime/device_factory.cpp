#include "runtime/device_factory.h"

#include "runtime/host_device.h"
#ifdef COMPUTRON_HAVE_CUDA
#include "runtime/cuda/cuda_device.h"
#include "runtime/cuda/model_execution.h"
#endif

namespace computron::runtime {

bool cudaBuiltIn() {
#ifdef COMPUTRON_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<DeviceFactory> makeDeviceFactory(const std::string& kind, int host_devices,
                                                 std::shared_ptr<FaultPlan> faults, int cuda_ordinal_shift) {
  if (kind == "host") {
    HostDeviceOptions options;
    options.faults = std::move(faults);
    return std::make_unique<HostDeviceFactory>(host_devices, std::move(options));
  }
  if (kind == "cuda") {
#ifdef COMPUTRON_HAVE_CUDA
    CudaDeviceOptions options;
    options.faults = std::move(faults);
    options.ordinal_shift = cuda_ordinal_shift;
    return std::make_unique<CudaDeviceFactory>(std::move(options));
#else
    (void)cuda_ordinal_shift;
    throw ConfigError(
        "--device cuda: CUDA is not built into this binary (configure with nvcc available, or "
        "-DCOMPUTRON_CUDA=ON); the host-memory device works: --device host");
#endif
  }
  throw ConfigError("--device: expected cuda or host, got '" + kind + "'");
}

std::shared_ptr<ModelExecution> makeModelExecution(const std::string& kind, const RealExecutionOptions& options) {
  if (kind != "cuda")
    throw ConfigError("--execution real runs the models on CUDA GPUs (--device cuda); the " + kind +
                      " device has only the placeholder: --execution placeholder");
#ifdef COMPUTRON_HAVE_CUDA
  return std::make_shared<CudaModelExecution>(options);
#else
  (void)options;
  throw ConfigError("--execution real: CUDA is not built into this binary");
#endif
}

}  // namespace computron::runtime
