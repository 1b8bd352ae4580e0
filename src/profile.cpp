// libtorch's operator profiler (Kineto, CPU activities), which tch does not expose: start it,
// then stop it and write what it recorded as a Chrome trace, the file PyTorch's
// `torch.profiler` exports. Wrapped by src/profile.rs; each function returns 0, or 1 with the
// message in `err` (ffi_guard.h).
#include <torch/csrc/autograd/profiler_kineto.h>

#include "ffi_guard.h"

namespace {
namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

ProfilerConfig config() { return ProfilerConfig(ProfilerState::KINETO); }
}  // namespace

extern "C" {

int dit_profiler_start(char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    std::set<ActivityType> cpu{ActivityType::CPU};
    prof::prepareProfiler(config(), cpu);
    prof::enableProfiler(config(), cpu);
  });
}

// Stops the profiler started above and saves its trace at `path` (UTF-8).
int dit_profiler_stop(const char* path, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] { prof::disableProfiler()->save(std::string(path)); });
}
}
