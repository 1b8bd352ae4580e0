// Process-wide libtorch switches that tch does not expose: which fused attention backends
// scaled_dot_product_attention may choose, and whether float32 products on CUDA may round
// through TF32. Wrapped by src/torch_flags.rs; each function returns 0, or 1 with the
// message in `err` (ffi_guard.h).
#include <ATen/Context.h>

#include "ffi_guard.h"

extern "C" {

// Each argument enables (1) or disables (0) one backend of scaled_dot_product_attention.
int dit_set_sdp_backends(int flash, int mem_efficient, int cudnn, int math, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto& ctx = at::globalContext();
    ctx.setSDPUseFlash(flash != 0);
    ctx.setSDPUseMemEfficient(mem_efficient != 0);
    ctx.setSDPUseCuDNN(cudnn != 0);
    ctx.setSDPUseMath(math != 0);
  });
}

// Bit 0 flash, bit 1 memory-efficient, bit 2 cuDNN, bit 3 math: the backends now enabled.
int dit_sdp_backends(int* out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto& ctx = at::globalContext();
    *out = (ctx.userEnabledFlashSDP() ? 1 : 0) | (ctx.userEnabledMemEfficientSDP() ? 2 : 0) |
           (ctx.userEnabledCuDNNSDP() ? 4 : 0) | (ctx.userEnabledMathSDP() ? 8 : 0);
  });
}

// TF32 for float32 matrix products (cuBLAS) and convolutions (cuDNN).
int dit_set_tf32(int allow, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto& ctx = at::globalContext();
    ctx.setAllowTF32CuBLAS(allow != 0);
    ctx.setAllowTF32CuDNN(allow != 0);
  });
}

// Bit 0 cuBLAS, bit 1 cuDNN.
int dit_tf32(int* out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto& ctx = at::globalContext();
    *out = (ctx.allowTF32CuBLAS() ? 1 : 0) | (ctx.allowTF32CuDNN() ? 2 : 0);
  });
}
}
