// The NCCL backend for c10d_shim.cpp. Compiled (with -DUSE_C10D_NCCL) only when the wheel has
// libtorch_cuda and the CUDA runtime and NCCL headers of its pip dependencies are present;
// see build.rs. Linked against libtorch_cuda, which exports c10d::ProcessGroupNCCL.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>

#include <chrono>
#include <cstdlib>

c10::intrusive_ptr<c10d::Backend> dit_make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                        int rank, int size, int device,
                                                        std::chrono::milliseconds timeout) {
  TORCH_CHECK(c10::cuda::device_count() > 0, "the NCCL backend needs a CUDA device; none is visible");
  TORCH_CHECK(device >= 0 && device < c10::cuda::device_count(), "cuda:", device,
              " does not exist (", static_cast<int>(c10::cuda::device_count()), " CUDA devices are visible)");
  // Blocking waits make a collective's timeout an error returned to the caller, as with
  // Gloo, rather than the watchdog tearing the process down; an explicit setting wins.
  setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
  // Bind the communicator to this rank's device at once rather than at the first collective.
  pg->eagerConnectSingleDevice(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  return pg;
}
