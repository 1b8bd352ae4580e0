//! What the model's output means (docs/OBJECTIVES.md): with x_t = α_t·x0 + σ_t·ε, where
//! α_t = sqrt(ᾱ_t) and σ_t = sqrt(1 − ᾱ_t), a model predicts ε, x0 or v = α_t·ε − σ_t·x0
//! (Salimans & Ho 2022, §4). Each one, with x_t, gives the other two; the training target and
//! the samplers' ε̂ and x̂0 come from here, and so do the min-SNR-γ weights (Hang et al.
//! 2023), SNR_t = α_t²/σ_t².

use tch::Tensor;

use super::{one_minus, Schedule};
use crate::config::{Loss, LossWeighting, Prediction};

/// α_t = sqrt(ᾱ_t) and σ_t = sqrt(1 − ᾱ_t): 0-dimensional for one step, (B, 1, 1, 1) for a
/// batch of steps, so they broadcast over images.
#[derive(Debug)]
pub struct Coefficients {
    pub signal: Tensor,
    pub noise: Tensor,
}

impl Coefficients {
    /// x_t = α_t·x0 + σ_t·ε (DDPM eq. 4).
    pub fn noised(&self, x0: &Tensor, eps: &Tensor) -> Tensor {
        &self.signal * x0 + &self.noise * eps
    }
}

impl Schedule {
    /// The coefficients of the steps `t` (B) int64, as (B, 1, 1, 1).
    pub fn coefficients(&self, t: &Tensor) -> Coefficients {
        let ac = self.alphas_cumprod.index_select(0, t).view([-1, 1, 1, 1]);
        Coefficients { signal: ac.sqrt(), noise: one_minus(&ac).sqrt() }
    }

    /// The coefficients of step `t`, 0-dimensional.
    pub fn coefficients_at(&self, t: i64) -> Coefficients {
        let ac = self.alphas_cumprod.get(t);
        Coefficients { signal: ac.sqrt(), noise: one_minus(&ac).sqrt() }
    }

    /// SNR_t = ᾱ_t/(1 − ᾱ_t) of the steps `t` (B) int64, float32 (B).
    pub fn snr(&self, t: &Tensor) -> Tensor {
        let ac = self.alphas_cumprod.index_select(0, t);
        &ac / one_minus(&ac)
    }
}

impl Prediction {
    /// What the model should output for the clean image `x0` noised with `eps`.
    pub fn target(self, x0: &Tensor, eps: &Tensor, c: &Coefficients) -> Tensor {
        match self {
            Self::Epsilon => eps.shallow_clone(),
            Self::X0 => x0.shallow_clone(),
            Self::V => &c.signal * eps - &c.noise * x0,
        }
    }

    /// ε̂ from the model's output `out` at `xt`.
    pub fn eps(self, out: &Tensor, xt: &Tensor, c: &Coefficients) -> Tensor {
        match self {
            Self::Epsilon => out.shallow_clone(),
            Self::X0 => (xt - &c.signal * out) / &c.noise,
            Self::V => &c.noise * xt + &c.signal * out,
        }
    }

    /// x̂0 from the model's output `out` at `xt` (unclamped).
    pub fn x0(self, out: &Tensor, xt: &Tensor, c: &Coefficients) -> Tensor {
        match self {
            Self::Epsilon => (xt - &c.noise * out) / &c.signal,
            Self::X0 => out.shallow_clone(),
            Self::V => &c.signal * xt - &c.noise * out,
        }
    }

    /// Each image's loss weight (B) for its step's `snr` (B) under the distance `loss`, or
    /// `None` when every step counts alike. Min-SNR-γ (Hang et al. 2023) is one weighting for
    /// every target: the x0-space distance times min(SNR, γ). A prediction's error is the x0
    /// error times sqrt(SNR) for ε and sqrt(SNR + 1) for v, so the weight divides by the
    /// distance's scale of that factor: SNR and SNR + 1 for L2 (the paper's, §3.4), sqrt(SNR)
    /// and sqrt(SNR + 1) for L1 (docs/OBJECTIVES.md).
    pub fn loss_weights(
        self,
        weighting: LossWeighting,
        loss: Loss,
        gamma: f64,
        snr: &Tensor,
    ) -> Option<Tensor> {
        match weighting {
            LossWeighting::None => None,
            LossWeighting::MinSnr => {
                let clipped = snr.clamp_max(gamma);
                let scale = match self {
                    Self::Epsilon => snr.shallow_clone(),
                    Self::X0 => return Some(clipped),
                    Self::V => snr + 1.0,
                };
                Some(match loss {
                    Loss::L2 => clipped / scale,
                    Loss::L1 => clipped / scale.sqrt(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::config::DiffusionConfig;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn every_prediction_converts_to_eps_and_x0_and_back() {
        let s = Schedule::new(&DiffusionConfig::default(), Device::Cpu);
        tch::manual_seed(5);
        let x0 = Tensor::rand([4, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let eps = Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 10, 500, 999]);
        let c = s.coefficients(&t);
        let xt = s.noised(&x0, &t, &eps);
        for p in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
            let out = p.target(&x0, &eps, &c);
            // Recovering ε from x0 divides by σ_t (0.01 at t = 0); x0 from ε by α_t (0.006 at
            // t = 999): float32 rounding of x_t (about 6e-8) grows by those factors.
            assert!(max_diff(&p.eps(&out, &xt, &c), &eps) < 2e-5, "{p:?}: ε");
            assert!(max_diff(&p.x0(&out, &xt, &c), &x0) < 5e-5, "{p:?}: x0");
        }
        // Per step: the 0-dim coefficients give the batched ones' values.
        let one = s.coefficients_at(500);
        assert_eq!(one.signal.double_value(&[]), c.signal.double_value(&[2, 0, 0, 0]));
        // The definitions: v = α·ε − σ·x0, and x_t = α·x0 + σ·ε is what `noised` made.
        let v = Prediction::V.target(&x0, &eps, &c);
        let (a, sg) = (c.signal.double_value(&[1, 0, 0, 0]), c.noise.double_value(&[1, 0, 0, 0]));
        let want = eps.get(1) * a - x0.get(1) * sg;
        assert!(max_diff(&v.get(1), &want) < 1e-6);
        assert!((a * a + sg * sg - 1.0).abs() < 1e-6);
    }

    #[test]
    fn min_snr_weights_are_the_papers_at_chosen_steps_for_either_loss() {
        let s = Schedule::new(&DiffusionConfig::default(), Device::Cpu);
        let ts = [0i64, 100, 200, 999];
        let snr = s.snr(&Tensor::from_slice(&ts));
        for (i, &t) in ts.iter().enumerate() {
            let ab = s.alphas_cumprod.double_value(&[t]);
            let r = ab / (1.0 - ab);
            assert!((snr.double_value(&[i as i64]) - r).abs() <= 1e-6 * r, "SNR at {t}");
            let m = r.min(5.0);
            for (loss, eps, v) in [(Loss::L2, r, r + 1.0), (Loss::L1, r.sqrt(), (r + 1.0).sqrt())] {
                for (p, want) in [(Prediction::Epsilon, m / eps), (Prediction::X0, m), (Prediction::V, m / v)]
                {
                    let got = p
                        .loss_weights(LossWeighting::MinSnr, loss, 5.0, &snr)
                        .unwrap()
                        .double_value(&[i as i64]);
                    assert!(
                        (got - want).abs() <= 1e-6 * want.max(1e-30),
                        "{p:?} {loss:?} at t = {t}: {got} against {want}"
                    );
                }
            }
        }
        // Early steps (SNR above γ) are down-weighted for ε; late ones keep weight 1.
        let eps = Prediction::Epsilon.loss_weights(LossWeighting::MinSnr, Loss::L2, 5.0, &snr).unwrap();
        assert!(eps.double_value(&[0]) < 1e-3 && eps.double_value(&[3]) == 1.0);
        assert!(Prediction::V.loss_weights(LossWeighting::None, Loss::L1, 5.0, &snr).is_none());
    }

    /// One weighting across targets: for the same x0-space error, every target's weighted
    /// loss is min(SNR, γ) times that error's distance, under L1 and under L2.
    #[test]
    fn min_snr_weights_the_same_x0_error_alike_for_every_target() {
        let s = Schedule::new(&DiffusionConfig::default(), Device::Cpu);
        tch::manual_seed(3);
        let x0 = Tensor::rand([4, 3, 4, 4], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
        let eps = Tensor::randn([4, 3, 4, 4], (Kind::Double, Device::Cpu));
        let err = Tensor::randn([4, 3, 4, 4], (Kind::Double, Device::Cpu)) * 0.1; // x̂0 − x0
        let t = Tensor::from_slice(&[0i64, 100, 500, 999]);
        let ac = s.alphas_cumprod.to_kind(Kind::Double).index_select(0, &t).view([-1, 1, 1, 1]);
        let c = Coefficients { signal: ac.sqrt(), noise: one_minus(&ac).sqrt() };
        let snr = (&ac / one_minus(&ac)).view([-1]);
        let xt = c.noised(&x0, &eps);
        let x0_hat = &x0 + &err;
        for loss in [Loss::L1, Loss::L2] {
            let distance = |d: Tensor| match loss {
                Loss::L1 => d.abs().mean_dim([1, 2, 3].as_slice(), false, Kind::Double),
                Loss::L2 => d.square().mean_dim([1, 2, 3].as_slice(), false, Kind::Double),
            };
            let want = distance(err.shallow_clone()) * snr.clamp_max(5.0);
            for p in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
                // The output that implies x̂0 at x_t, and its target.
                let eps_hat = (&xt - &c.signal * &x0_hat) / &c.noise;
                let out = p.target(&x0_hat, &eps_hat, &c);
                let w = p.loss_weights(LossWeighting::MinSnr, loss, 5.0, &snr).unwrap();
                let got = distance(out - p.target(&x0, &eps, &c)) * w;
                let rel = ((&got - &want).abs() / &want).max().double_value(&[]);
                assert!(rel < 1e-9, "{p:?} {loss:?}: {rel}");
            }
        }
    }
}
