//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models", Algorithm 2): the multistep second-order solver of the
//! diffusion ODE in its data-prediction form, on the trained schedule's discrete steps.
//!
//! With α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t) and λ_t = log(α_t/σ_t), one step from t to s
//! (λ_s > λ_t, h = λ_s − λ_t) is x_s = (σ_s/σ_t)·x_t − α_s·(e^{−h} − 1)·D, where D is the
//! model's x̂0 at t for the first step, and (1 + 1/(2r))·x̂0_t − 1/(2r)·x̂0_prev with
//! r = h_prev/h after it: the previous step's x̂0 extrapolates the current one.

use tch::Tensor;

use super::Schedule;

/// The x̂0 of the step before, and that step's t: what makes the solver second order.
#[derive(Debug)]
pub struct Previous<'a> {
    pub x0: &'a Tensor,
    pub t: i64,
}

impl Schedule {
    /// The `steps` training steps the solver evaluates the model at, descending:
    /// round(k·(T − 1)/steps) for k = steps … 1 (halves round up), that is `steps + 1` points
    /// evenly spaced over [0, T − 1] without t = 0. After the last one the walk ends on that
    /// step's x̂0 (a first-order step to σ = 0), as diffusers' multistep solver with
    /// `final_sigmas_type = "zero"` does, so no second-order step extrapolates across the
    /// large jump in λ between t ≈ T/steps and t = 0. The points are distinct while
    /// steps ≤ T − 1 (their spacing (T − 1)/steps is then at least 1). Panics unless
    /// 1 ≤ steps ≤ max(T − 1, 1) (`SamplerKind::max_steps`; callers check user input first).
    pub fn dpm_solver_timesteps(&self, steps: i64) -> Vec<i64> {
        assert!(
            (1..=(self.max_t - 1).max(1)).contains(&steps),
            "dpm_solver_timesteps: steps {steps} not in 1..={}",
            (self.max_t - 1).max(1)
        );
        let span = self.max_t - 1;
        (1..=steps).rev().map(|k| (2 * k * span + steps) / (2 * steps)).collect()
    }

    /// (α_t, σ_t, λ_t) of step t, in double precision from the float32 table.
    fn log_snr_terms(&self, t: i64) -> (f64, f64, f64) {
        let ab = self.alphas_cumprod.double_value(&[t]);
        let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
        (alpha, sigma, alpha.ln() - sigma.ln())
    }

    /// One DPM-Solver++(2M) step from `t` to `t_next` given the model's x̂0 at `t` (clamped
    /// by the caller). `None` as `t_next` ends the walk: the result is x̂0 (σ = 0, where the
    /// update reduces to D = x̂0; a second-order D would need r = 0). `previous` is the last
    /// step's x̂0 and t, `None` on the first step (first order).
    pub fn dpmpp_2m_step(
        &self,
        x: &Tensor,
        x0: &Tensor,
        t: i64,
        t_next: Option<i64>,
        previous: Option<Previous>,
    ) -> Tensor {
        let Some(s) = t_next else { return x0.shallow_clone() };
        let (_, sigma_t, lambda_t) = self.log_snr_terms(t);
        let (alpha_s, sigma_s, lambda_s) = self.log_snr_terms(s);
        let h = lambda_s - lambda_t;
        let d = match previous {
            None => x0.shallow_clone(),
            Some(Previous { x0: x0_prev, t: t_prev }) => {
                let r = (lambda_t - self.log_snr_terms(t_prev).2) / h;
                x0 * (1.0 + 0.5 / r) - x0_prev * (0.5 / r)
            }
        };
        x * (sigma_s / sigma_t) - d * (alpha_s * (-h).exp_m1())
    }
}
