//! The DDPM of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") as the original
//! computes it (REFERENCE.md §4): a linear beta schedule in float32, forward noising
//! (eq. 4), and the ancestral sampling step (Algorithm 2) with the original's clamp of x to
//! [−1, 1] after every step. All tables are built with libtorch's own ops, in the original's
//! order, so they equal PyTorch's bit for bit.

use tch::{Device, Kind, Tensor};

use crate::config::DiffusionConfig;

/// 1 − t, rounded once as PyTorch's `1 - t` is.
fn one_minus(t: &Tensor) -> Tensor {
    t.neg() + 1.0
}

/// The schedule tables, each of length T, on one device.
#[derive(Debug)]
pub struct Schedule {
    pub max_t: i64,
    pub betas: Tensor,
    pub alphas: Tensor,
    /// ᾱ_t = ∏_{s ≤ t} α_s
    pub alphas_cumprod: Tensor,
    /// ᾱ_{t−1}, with ᾱ_{−1} = 1
    pub alphas_cumprod_prev: Tensor,
    /// Posterior variance σ²_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (DDPM eq. 7)
    pub variance: Tensor,
}

impl Schedule {
    pub fn new(cfg: &DiffusionConfig, device: Device) -> Self {
        let t = cfg.max_t;
        let opts = (Kind::Float, device);
        let betas = Tensor::linspace(cfg.beta_start, cfg.beta_end, t, opts);
        let alphas = one_minus(&betas);
        let alphas_cumprod = alphas.cumprod(-1, Kind::Float);
        let alphas_cumprod_prev =
            Tensor::cat(&[Tensor::ones([1], opts), alphas_cumprod.narrow(0, 0, t - 1)], 0);
        let variance = one_minus(&alphas) * one_minus(&alphas_cumprod_prev) / one_minus(&alphas_cumprod);
        Self { max_t: t, betas, alphas, alphas_cumprod, alphas_cumprod_prev, variance }
    }

    /// Forward noising (DDPM eq. 4): x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε with ε = randn_like(x0).
    /// x0 (B, C, H, W), t (B) int64 → (x_t, ε).
    pub fn add_noise(&self, x0: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        let noise = x0.randn_like();
        let ac = self.alphas_cumprod.index_select(0, t).view([-1, 1, 1, 1]); // (B, 1, 1, 1)
        let xt = ac.sqrt() * x0 + one_minus(&ac).sqrt() * &noise;
        (xt, noise)
    }

    /// One ancestral step at s (DDPM Algorithm 2, line 4), then the original's clamp:
    /// x_{s−1} = (x_s − (1 − α_s)/sqrt(1 − ᾱ_s) · ε̂) / sqrt(α_s) + σ_s·z, z ~ N(0, I) drawn
    /// with `randn_like` for s > 0 and no draw at s = 0.
    pub fn ddpm_step(&self, x: &Tensor, eps: &Tensor, s: i64) -> Tensor {
        let alpha = self.alphas.get(s);
        let alpha_bar = self.alphas_cumprod.get(s);
        let mean = (x - one_minus(&alpha) / one_minus(&alpha_bar).sqrt() * eps) / alpha.sqrt();
        let x = if s > 0 { &mean + mean.randn_like() * self.variance.get(s).sqrt() } else { mean };
        x.clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_the_expected_shape_and_ends() {
        let s = Schedule::new(&DiffusionConfig::default(), Device::Cpu);
        assert_eq!(s.betas.size(), [1000]);
        assert_eq!(s.betas.double_value(&[0]) as f32, 1e-4f32);
        assert_eq!(s.betas.double_value(&[999]) as f32, 0.02f32);
        assert_eq!(s.alphas_cumprod_prev.double_value(&[0]), 1.0);
        assert_eq!(s.variance.double_value(&[0]), 0.0);
        let ac = Vec::<f32>::try_from(&s.alphas_cumprod).unwrap();
        assert!(ac.windows(2).all(|w| w[1] < w[0]));
    }
}
