// The per-parameter loops of src/optim.rs in C++, where ATen's operators take the `value`
// arguments that tch leaves out: PyTorch's single-tensor Adam update written with the same
// operators in the same order (so the numbers are PyTorch's), without the temporaries that
// scaling outside the operator costs, and gradients reset to undefined as PyTorch's
// `zero_grad(set_to_none=True)` does, so the next backward pass stores its gradients instead
// of adding them to zeros. Each function returns 0, or 1 with the message in `err`
// (ffi_guard.h).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "ffi_guard.h"

extern "C" {

// For each i with a defined gradient g of params[i], m = exp_avg[i], v = exp_avg_sq[i]:
//   m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g·g;
//   p ← p − step_size · m / (sqrt(v) / bias_correction2_sqrt + eps).
int dit_adam_update(const at::Tensor* const* params, const at::Tensor* const* exp_avg,
                    const at::Tensor* const* exp_avg_sq, size_t count, double beta1, double beta2,
                    double eps, double step_size, double bias_correction2_sqrt, char* err,
                    size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < count; ++i) {
      const at::Tensor& g = params[i]->grad();
      if (!g.defined()) continue;
      at::Tensor m = *exp_avg[i], v = *exp_avg_sq[i], p = *params[i];
      m.lerp_(g, 1 - beta1);
      v.mul_(beta2).addcmul_(g, g, 1 - beta2);
      at::Tensor denom = (v.sqrt() / bias_correction2_sqrt).add_(eps);
      p.addcdiv_(m, denom, -step_size);
    }
  });
}

// Resets each tensor's gradient to undefined.
int dit_clear_grads(const at::Tensor* const* params, size_t count, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    for (size_t i = 0; i < count; ++i) params[i]->mutable_grad().reset();
  });
}
}
