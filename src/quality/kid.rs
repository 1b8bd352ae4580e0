//! The Kernel Inception Distance (Bińkowski et al. 2018) as torch-fidelity computes it: the
//! unbiased estimate of the squared maximum mean discrepancy under the cubic polynomial kernel
//! k(x, y) = (x·y / D + 1)³, averaged over random subsets of both feature sets, with the
//! (population) standard deviation over the subsets. Subsets are drawn without replacement from
//! the project's SplitMix64 generator (torch-fidelity draws from numpy's `RandomState(2020)`: the
//! arithmetic is the same, the draws are not); the subset size is capped at the smaller set's
//! count, where torch-fidelity refuses. Computed in float64.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::rng::SplitMix64;

/// torch-fidelity's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct KidOptions {
    pub subsets: usize,
    pub subset_size: usize,
}

impl Default for KidOptions {
    fn default() -> Self {
        Self { subsets: 100, subset_size: 1000 }
    }
}

/// KID's mean and standard deviation over the subsets, unscaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    /// Feature vectors drawn from each set per subset.
    pub subset_size: usize,
}

/// KID between the feature sets `a` (N, D) and `b` (M, D) (see the module documentation).
pub fn kid(a: &Tensor, b: &Tensor, opts: &KidOptions, seed: u64) -> Result<Kid> {
    let (na, nb) = (a.size()[0] as usize, b.size()[0] as usize);
    let m = opts.subset_size.min(na).min(nb);
    ensure!(m >= 2, "KID needs at least 2 feature vectors a set, got {na} and {nb}");
    ensure!(opts.subsets >= 1, "KID needs at least one subset");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let mut rng = SplitMix64::stream(seed, 7);
    let mmds: Vec<f64> = tch::no_grad(|| {
        (0..opts.subsets)
            .map(|_| {
                let pick = |t: &Tensor, n: usize, rng: &mut SplitMix64| {
                    let idx: Vec<i64> = rng.subset(n, m).into_iter().map(|i| i as i64).collect();
                    t.index_select(0, &Tensor::from_slice(&idx).to_device(t.device()))
                };
                let (x, y) = (pick(&a, na, &mut rng), pick(&b, nb, &mut rng));
                unbiased_mmd2(&x, &y)
            })
            .collect()
    });
    let mean = mmds.iter().sum::<f64>() / mmds.len() as f64;
    let var = mmds.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / mmds.len() as f64;
    Ok(Kid { mean, std: var.sqrt(), subset_size: m })
}

/// The cubic polynomial kernel matrix (x·y / D + 1)³ of the rows of `x` and `y`.
fn kernel(x: &Tensor, y: &Tensor) -> Tensor {
    let d = x.size()[1] as f64;
    (x.mm(&y.tr()) / d + 1.0).pow_tensor_scalar(3)
}

/// The unbiased MMD² of two equally large samples: the within-set kernel means without their
/// diagonals, less twice the cross-set mean.
fn unbiased_mmd2(x: &Tensor, y: &Tensor) -> f64 {
    let m = x.size()[0] as f64;
    let off_diagonal_sum = |k: Tensor| (k.sum(Kind::Double) - k.trace()).double_value(&[]);
    let within = off_diagonal_sum(kernel(x, x)) + off_diagonal_sum(kernel(y, y));
    let across = kernel(x, y).sum(Kind::Double).double_value(&[]);
    within / (m * (m - 1.0)) - 2.0 * across / (m * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_the_definition_on_a_small_case() {
        // x = {0, 1}, y = {2} ∪ {2}, D = 1: k(a, b) = (ab + 1)³.
        let x = Tensor::from_slice(&[0.0f64, 1.0]).view([2, 1]);
        let y = Tensor::from_slice(&[2.0f64, 2.0]).view([2, 1]);
        let k = |a: f64, b: f64| (a * b + 1.0).powi(3);
        let within = (2.0 * k(0.0, 1.0) + 2.0 * k(2.0, 2.0)) / 2.0;
        let across = (k(0.0, 2.0) * 2.0 + k(1.0, 2.0) * 2.0) / 4.0;
        assert!((unbiased_mmd2(&x, &y) - (within - 2.0 * across)).abs() < 1e-12);
    }

    #[test]
    fn one_subset_of_everything_is_seed_free_and_the_size_is_capped() {
        let a = Tensor::randn([40, 8], (Kind::Double, tch::Device::Cpu));
        let b = Tensor::randn([30, 8], (Kind::Double, tch::Device::Cpu)) + 0.5;
        let opts = KidOptions { subsets: 1, subset_size: 1000 };
        let (one, other) = (
            kid(&a.narrow(0, 0, 30), &b, &opts, 1).unwrap(),
            kid(&a.narrow(0, 0, 30), &b, &opts, 2).unwrap(),
        );
        assert_eq!(one.subset_size, 30);
        assert!((one.mean - other.mean).abs() < 1e-12 && one.std == 0.0);
        let many = kid(&a, &b, &KidOptions::default(), 0).unwrap();
        assert!(many.mean > 0.0 && many.std > 0.0, "{many:?}");
        assert!(kid(&a.narrow(0, 0, 1), &b, &opts, 0).is_err());
    }
}
