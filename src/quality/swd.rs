//! The sliced Wasserstein distance between two equally large sets of vectors (Rabin, Peyré,
//! Delon & Bernot, "Wasserstein Barycenter and its Application to Texture Mixing", 2011), as
//! Karras et al. 2018 (appendix D) compute it: project both sets on random unit directions,
//! sort each projection, and average the absolute differences of the sorted values (the
//! 1-Wasserstein distance of the 1-D projections), over all directions.

use rayon::prelude::*;
use tch::{Kind, Tensor};

use super::sort;
use crate::rng::SplitMix64;

/// Projections sorted at a time: bounds the extra memory to about 12 bytes × this × set size.
const SORT_CHUNK: i64 = 32;

/// `count` directions drawn uniformly on the unit sphere of R^dim (normalised Gaussian
/// vectors), as the columns of a (dim, count) float32 tensor on the CPU.
pub fn directions(dim: i64, count: i64, rng: &mut SplitMix64) -> Tensor {
    let values: Vec<f32> = (0..dim * count).map(|_| rng.normal() as f32).collect();
    let gaussian = Tensor::from_slice(&values).view([dim, count]);
    let norms = gaussian.square().sum_dim_intlist([0i64].as_slice(), true, Kind::Float).sqrt();
    gaussian / norms
}

/// Σ over the `dirs` (dim, P) of mean_i |sort(a·d)_i − sort(b·d)_i| for a, b (D, dim) of the
/// same size D, in float64. One matrix product per set (libtorch); the sorting is done in Rust
/// ([`sort`]), `SORT_CHUNK` projections at a time.
fn projected_distance_sum(a: &Tensor, b: &Tensor, dirs: &Tensor) -> f64 {
    let dirs_t = dirs.to_device(a.device()).tr(); // (P, dim)
    let (pa, pb) = (dirs_t.matmul(&a.tr()), dirs_t.matmul(&b.tr())); // (P, D) each
    let p = pa.size()[0];
    let mut sum = 0.0;
    let mut start = 0;
    while start < p {
        let len = SORT_CHUNK.min(p - start);
        let sa = sort::sorted_row_keys(&pa.narrow(0, start, len));
        let sb = sort::sorted_row_keys(&pb.narrow(0, start, len));
        sum += sa.par_iter().zip(&sb).map(|(ra, rb)| mean_abs_difference(ra, rb)).sum::<f64>();
        start += len;
    }
    sum
}

/// mean_i |x_i − y_i| of two equally long sorted rows of order keys.
fn mean_abs_difference(x: &[u32], y: &[u32]) -> f64 {
    let sum: f64 = x
        .iter()
        .zip(y)
        .map(|(&p, &q)| (sort::from_order_key(p) - sort::from_order_key(q)).abs() as f64)
        .sum();
    sum / x.len() as f64
}

/// The sliced Wasserstein distance between the rows of `a` and `b` (D, dim), both of D rows:
/// the mean over `repeats × per_repeat` random unit directions of the mean absolute difference
/// between the sorted projections. Directions are drawn `per_repeat` at a time from `rng`, as
/// the paper's "4 × 128"; the value does not depend on the grouping, only the memory does.
pub fn sliced_wasserstein(
    a: &Tensor,
    b: &Tensor,
    repeats: usize,
    per_repeat: i64,
    rng: &mut SplitMix64,
) -> f64 {
    let dim = a.size()[1];
    let mut sum = 0.0;
    for _ in 0..repeats {
        sum += projected_distance_sum(a, b, &directions(dim, per_repeat, rng));
    }
    sum / (repeats as f64 * per_repeat as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn directions_are_unit_vectors() {
        let d = directions(147, 64, &mut SplitMix64::stream(0, 0));
        let norms = d.square().sum_dim_intlist([0i64].as_slice(), false, Kind::Float).sqrt();
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn a_shift_along_every_direction_is_measured_exactly() {
        // b = a + c·e_0: every projection on d moves by c·d_0, so the distance is
        // c · mean |d_0| over the directions, whatever the order of the rows.
        tch::manual_seed(1);
        let a = Tensor::randn([300, 5], (Kind::Float, Device::Cpu));
        let shift = Tensor::from_slice(&[0.5f32, 0.0, 0.0, 0.0, 0.0]);
        let b = (&a + &shift).flip([0]);
        let got = sliced_wasserstein(&a, &b, 2, 16, &mut SplitMix64::stream(7, 0));
        let mut rng = SplitMix64::stream(7, 0);
        let (d1, d2) = (directions(5, 16, &mut rng), directions(5, 16, &mut rng));
        let expected = Tensor::cat(&[d1, d2], 1).get(0).abs().mean(Kind::Double).double_value(&[]) * 0.5;
        assert!((got - expected).abs() < 1e-5, "{got} against {expected}");
        assert!(sliced_wasserstein(&a, &a.flip([0]), 1, 8, &mut SplitMix64::stream(0, 0)) < 1e-6);
    }
}
