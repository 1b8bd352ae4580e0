//! The Fréchet Inception Distance (Heusel et al. 2017) as pytorch-fid's
//! `calculate_frechet_distance` computes it from two sets of features: the means and covariances
//! (`np.cov`, N − 1 in the denominator) in float64, then
//! ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂), where √ is the principal matrix square root of the
//! (non-symmetric) product. A product whose root is not finite is retried once with 10⁻⁶ added
//! to both diagonals; a root whose diagonal keeps an imaginary part above 10⁻³ is an error, as
//! there. The root comes from the eigendecomposition Σ₁Σ₂ = V diag(λ) V⁻¹ (√ = V diag(√λ) V⁻¹;
//! its diagonal is all the distance needs), where SciPy's `sqrtm` uses a Schur form: the same
//! matrix function, and the same trace to rounding.

use anyhow::{bail, ensure, Result};
use tch::{Kind, Tensor};

/// What the distance needs of one feature set.
pub struct Statistics {
    /// (D,) float64.
    pub mean: Tensor,
    /// (D, D) float64.
    pub cov: Tensor,
}

impl Statistics {
    /// The mean and the covariance (N − 1 in the denominator, as `np.cov`) of features (N, D).
    pub fn of(features: &Tensor) -> Result<Statistics> {
        let n = features.size()[0];
        ensure!(n >= 2, "{n} feature vectors: a covariance needs at least 2");
        let f = features.to_kind(Kind::Double);
        let mean = f.mean_dim(0, false, Kind::Double);
        let centred = f - mean.unsqueeze(0);
        let cov = centred.tr().mm(&centred) / (n - 1) as f64;
        Ok(Statistics { mean, cov })
    }
}

/// The offset added to both covariances' diagonals when the first root is not finite.
const EPS: f64 = 1e-6;

/// Largest imaginary part accepted on the root's diagonal.
const IMAGINARY_TOLERANCE: f64 = 1e-3;

/// The Fréchet distance between the Gaussians of `a` and `b` (see the module documentation).
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64> {
    ensure!(
        a.cov.size() == b.cov.size(),
        "features of {:?} and {:?} dimensions",
        a.mean.size(),
        b.mean.size()
    );
    tch::no_grad(|| {
        let diff = &a.mean - &b.mean;
        let root = match root_diagonal(&a.cov.mm(&b.cov)) {
            Some(diagonal) => diagonal,
            None => {
                eprintln!("note: the FID covariance product is singular; adding {EPS} to the diagonals, as pytorch-fid does");
                let offset = Tensor::eye(a.cov.size()[0], (Kind::Double, a.cov.device())) * EPS;
                match root_diagonal(&(&a.cov + &offset).mm(&(&b.cov + &offset))) {
                    Some(diagonal) => diagonal,
                    None => bail!("the square root of the FID covariance product is not finite"),
                }
            }
        };
        let imaginary = root.imag().abs().max().double_value(&[]);
        ensure!(
            imaginary <= IMAGINARY_TOLERANCE,
            "FID: imaginary component {imaginary} in the covariance root"
        );
        let trace_root = root.real().sum(Kind::Double).double_value(&[]);
        let mean_term = diff.dot(&diff).double_value(&[]);
        let traces = a.cov.trace().double_value(&[]) + b.cov.trace().double_value(&[]);
        Ok(mean_term + traces - 2.0 * trace_root)
    })
}

/// The diagonal (complex) of the principal square root of `m`, or None when it is not finite.
fn root_diagonal(m: &Tensor) -> Option<Tensor> {
    let (values, vectors) = m.linalg_eig();
    let roots = values.sqrt();
    let inverse = Tensor::linalg_inv(&vectors);
    // diag(V diag(s) V⁻¹)_i = Σ_j V_ij s_j (V⁻¹)_ji
    let diagonal = (&vectors * roots.unsqueeze(0) * inverse.tr()).sum_dim_intlist(1, false, None::<Kind>);
    let finite = |t: &Tensor| t.view_as_real().isfinite().all().int64_value(&[]) == 1;
    finite(&diagonal).then_some(diagonal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean: &[f64], cov: &[f64]) -> Statistics {
        let d = mean.len() as i64;
        Statistics { mean: Tensor::from_slice(mean), cov: Tensor::from_slice(cov).view([d, d]) }
    }

    #[test]
    fn the_distance_of_commuting_gaussians_is_the_closed_form() {
        // Diagonal covariances commute: tr √(Σ₁Σ₂) = Σ √(a_i b_i).
        let a = stats(&[0.0, 1.0], &[4.0, 0.0, 0.0, 9.0]);
        let b = stats(&[3.0, 1.0], &[1.0, 0.0, 0.0, 1.0]);
        let expected = 9.0 + (4.0 + 9.0) + 2.0 - 2.0 * (2.0 + 3.0);
        assert!((frechet_distance(&a, &b).unwrap() - expected).abs() < 1e-12);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-12);
    }

    #[test]
    fn statistics_are_numpys_mean_and_cov() {
        let f = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 6.0, 5.0, 4.0]).view([3, 2]);
        let s = Statistics::of(&f).unwrap();
        assert_eq!(Vec::<f64>::try_from(&s.mean).unwrap(), [3.0, 4.0]);
        // np.cov([[1, 3, 5], [2, 6, 4]]) = [[4, 2], [2, 4]]
        assert_eq!(Vec::<f64>::try_from(&s.cov.flatten(0, 1)).unwrap(), [4.0, 2.0, 2.0, 4.0]);
        assert!(Statistics::of(&f.narrow(0, 0, 1)).is_err());
    }
}
