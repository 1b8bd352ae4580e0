//! Adam (Kingma & Ba 2015, Algorithm 1) written out with the same tensor operations, in the
//! same order, as PyTorch's single-tensor `torch.optim.Adam` (in `optim.cpp`), so one step gives PyTorch's
//! numbers and the moments can be saved and restored (tch's optimizer keeps them private).
//! Also global-norm gradient clipping and an exponential moving average of the weights.

use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::ffi::call;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn dit_adam_update(
        params: *const *const C_tensor,
        exp_avg: *const *const C_tensor,
        exp_avg_sq: *const *const C_tensor,
        count: usize,
        beta1: f64,
        beta2: f64,
        eps: f64,
        step_size: f64,
        bias_correction2_sqrt: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn dit_clear_grads(params: *const *const C_tensor, count: usize, err: *mut c_char, err_len: usize)
        -> i32;
}

/// Adam's moment estimates for a list of parameters.
#[derive(Debug)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// First moments m, one per parameter.
    pub exp_avg: Vec<Tensor>,
    /// Second moments v, one per parameter.
    pub exp_avg_sq: Vec<Tensor>,
    /// Updates done so far (for the bias corrections).
    pub step: i64,
}

impl Adam {
    /// Zero moments; PyTorch's defaults betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(params: &[Tensor]) -> Self {
        let zeros = || params.iter().map(|p| p.zeros_like().detach()).collect();
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, exp_avg: zeros(), exp_avg_sq: zeros(), step: 0 }
    }

    /// One update of every parameter from its `.grad()` (parameters without one are left as
    /// they are), by `optim.cpp`: PyTorch's operators, order and `value` arguments.
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        self.step += 1;
        let step = self.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2_sqrt = (1.0 - self.beta2.powf(step)).sqrt();
        let step_size = lr / bias_correction1;
        assert!(
            params.len() == self.exp_avg.len() && params.len() == self.exp_avg_sq.len(),
            "Adam holds moments for {} parameters, given {}",
            self.exp_avg.len(),
            params.len()
        );
        let (p, m, v) = (pointers(params), pointers(&self.exp_avg), pointers(&self.exp_avg_sq));
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        // SAFETY: three arrays of the same length (asserted above) of live tensors, borrowed for
        // the call (the moments have the parameters' shapes); the shim writes at most `len` bytes of message.
        call(|err, len| unsafe {
            dit_adam_update(
                p.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                p.len(),
                b1,
                b2,
                eps,
                step_size,
                bias_correction2_sqrt,
                err,
                len,
            )
        })
        .unwrap_or_else(|e| panic!("Adam's update failed inside libtorch: {e}"));
    }
}

/// The at::Tensor pointers of `tensors`, for the shims of `optim.cpp`.
fn pointers(tensors: &[Tensor]) -> Vec<*const C_tensor> {
    tensors.iter().map(Tensor::as_ptr).collect()
}

/// Resets every gradient to undefined, as PyTorch's `zero_grad()` (set to None) does: the
/// next backward pass stores its gradients instead of adding them to zeros.
pub fn zero_grad(params: &[Tensor]) {
    let p = pointers(params);
    // SAFETY: an array of `len` live tensors, borrowed for the call.
    call(|err, len| unsafe { dit_clear_grads(p.as_ptr(), p.len(), err, len) })
        .unwrap_or_else(|e| panic!("clearing gradients failed inside libtorch: {e}"));
}

/// The global L2 norm of all gradients, as a 0-dim tensor on their device (no host sync),
/// and, when `max_norm > 0`, scales them as `torch.nn.utils.clip_grad_norm_` does.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Tensor {
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    if max_norm > 0.0 {
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_(&coef);
            }
        });
    }
    total
}

/// An exponential moving average of parameters: ema ← decay·ema + (1 − decay)·p.
#[derive(Debug)]
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<Tensor>,
}

impl Ema {
    pub fn new(params: &[Tensor], decay: f64) -> Self {
        Self { decay, shadow: params.iter().map(|p| p.detach().copy()).collect() }
    }

    pub fn update(&mut self, params: &[Tensor]) {
        tch::no_grad(|| {
            for (s, p) in self.shadow.iter_mut().zip(params) {
                let _ = s.lerp_(p, 1.0 - self.decay);
            }
        });
    }
}

/// The learning rate at `step` (0-based) of `total` steps.
pub fn learning_rate(cfg: &crate::config::TrainConfig, step: i64, total: i64) -> f64 {
    let warmup = cfg.warmup_steps;
    if step < warmup {
        return cfg.lr * (step + 1) as f64 / warmup as f64;
    }
    match cfg.lr_schedule {
        crate::config::LrSchedule::Constant => cfg.lr,
        crate::config::LrSchedule::Cosine => {
            let span = (total - warmup).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
            cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}
