//! Flow matching on the linear path (Lipman et al. 2023; Liu et al. 2023; SiT, Ma et al. 2024),
//! as LightningDiT's `transport/` computes it with its configs' choices (Linear path, velocity
//! target): t in [0, 1], x_t = t·x1 + (1 − t)·x0 with x1 the data and x0 ~ N(0, I) the noise,
//! and the model learns u = x1 − x0, the velocity of the path. Sampling integrates
//! dx/dt = v̂(x, t) from the noise at t = 0 to the data at t = 1 on a fixed grid.

use tch::{Device, Kind, Tensor};

use crate::config::TimestepSampling;

/// The training times of a batch of `b` (B) float32, on the CPU: U[0, 1), or sigmoid(n) with
/// n ~ N(0, 1) (logit-normal, Esser et al. 2024).
pub fn draw_times(sampling: TimestepSampling, b: i64) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    match sampling {
        TimestepSampling::Uniform => Tensor::rand([b], opts),
        TimestepSampling::LogitNormal => Tensor::randn([b], opts).sigmoid(),
    }
}

/// x_t = t·x1 + (1 − t)·x0 for data `x1`, noise `x0` (B, C, H, W) and times `t` (B).
pub fn interpolate(x1: &Tensor, x0: &Tensor, t: &Tensor) -> Tensor {
    let t = t.to_kind(Kind::Float).view([-1, 1, 1, 1]);
    &t * x1 + (t.neg() + 1.0) * x0
}

/// The path's velocity dx_t/dt = x1 − x0: what a flow model learns.
pub fn velocity(x1: &Tensor, x0: &Tensor) -> Tensor {
    x1 - x0
}

/// The mean over pixels and images of 1 − cos over channels between the predicted and the
/// true velocity (B, C, H, W): LightningDiT's cosine loss (`use_cosine_loss`), with PyTorch's
/// `cosine_similarity` (norms floored at 1e-8).
pub fn cosine_loss(prediction: &Tensor, target: &Tensor) -> Tensor {
    (Tensor::cosine_similarity(prediction, target, 1, 1e-8).neg() + 1.0).mean(Kind::Float)
}

/// The `steps + 1` times of an integration from the noise (0) to the data (1): evenly spaced,
/// then with `shift` = s moved to s·t / (1 + (s − 1)·t) (s < 1 spends more steps near the
/// noise), each in float32 as LightningDiT's sampler computes them (`torch.linspace(0, 1, n)`).
pub fn time_grid(steps: i64, shift: Option<f64>) -> Vec<f32> {
    let grid = Tensor::linspace(0.0, 1.0, steps + 1, (Kind::Float, Device::Cpu));
    let grid = match shift {
        None => grid,
        Some(s) => (&grid * s) / ((&grid * (s - 1.0)) + 1.0),
    };
    Vec::<f32>::try_from(grid).expect("a float32 CPU tensor converts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_starts_at_the_noise_ends_at_the_data_and_moves_at_the_velocity() {
        tch::manual_seed(1);
        let x1 = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let x0 = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let at = |t: f32| interpolate(&x1, &x0, &Tensor::from_slice(&[t, t]));
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert_eq!(diff(&at(0.0), &x0), 0.0);
        assert_eq!(diff(&at(1.0), &x1), 0.0);
        // Linear in t: the difference over 0.25 is a quarter of the velocity.
        assert!(diff(&((at(0.75) - at(0.5)) * 4.0), &velocity(&x1, &x0)) < 1e-5);
    }

    #[test]
    fn the_grid_runs_from_zero_to_one_and_the_shift_keeps_its_ends() {
        assert_eq!(time_grid(4, None), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let shifted = time_grid(4, Some(0.3));
        assert_eq!((shifted[0], shifted[4]), (0.0, 1.0));
        // s·t/(1 + (s − 1)·t) at t = 0.5, s = 0.3: 0.15 / 0.65.
        assert!((shifted[2] as f64 - 0.15 / 0.65).abs() < 1e-6, "{shifted:?}");
        assert!(shifted.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn logit_normal_times_lie_in_the_open_interval_around_one_half() {
        tch::manual_seed(0);
        let t = draw_times(TimestepSampling::LogitNormal, 4096);
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        assert!(lo > 0.0 && hi < 1.0, "{lo} {hi}");
        assert!((t.median().double_value(&[]) - 0.5).abs() < 0.03);
    }

    #[test]
    fn the_cosine_loss_is_zero_for_parallel_and_two_for_opposite_velocities() {
        tch::manual_seed(2);
        let v = Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu));
        assert!(cosine_loss(&(&v * 3.0), &v).double_value(&[]).abs() < 1e-6);
        assert!((cosine_loss(&v.neg(), &v).double_value(&[]) - 2.0).abs() < 1e-6);
    }
}
