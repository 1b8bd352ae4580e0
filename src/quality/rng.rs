//! The random numbers of the metric: SplitMix64 (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014) in Rust, so a measurement is a function of its
//! seed alone and never touches libtorch's global generator (a measurement in the middle of a
//! training run leaves the run's random numbers as they were).

/// SplitMix64's increment (2⁶⁴ / φ).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 generator.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator of stream `stream` of `seed`: distinct streams give unrelated sequences.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut mixer = SplitMix64(seed);
        SplitMix64(mixer.next_u64() ^ stream.wrapping_mul(GOLDEN_GAMMA))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0), by the multiply-high method; the bias is below n / 2⁶⁴.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A standard normal number (Box–Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]: the logarithm stays finite
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `k` distinct indices of 0..n, ascending (k ≤ n): a partial Fisher–Yates shuffle.
    pub fn subset(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_numbers_have_mean_0_and_variance_1() {
        let mut rng = SplitMix64::new(3, 0);
        let v: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
    }

    #[test]
    fn subsets_are_distinct_sorted_and_seeded() {
        let a = SplitMix64::new(1, 2).subset(100, 30);
        assert_eq!(a.len(), 30);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[29] < 100);
        assert_eq!(a, SplitMix64::new(1, 2).subset(100, 30));
        assert_ne!(a, SplitMix64::new(1, 3).subset(100, 30));
    }
}
