//! Randomness without global state: SplitMix64 (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014), as a hash ([`splitmix64`]) and as a
//! generator ([`SplitMix64`]), and the seeds derived from a run's one seed: libtorch's seed of
//! each training step ([`step_seed`]) and the data order of each epoch ([`epoch_order`]).
//! Each is a function of (seed, step) or (seed, epoch) only, so a resumed run draws exactly
//! what an uninterrupted one would have drawn.

/// SplitMix64's increment (2⁶⁴ / φ).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output for the state `z` before its increment: a fast, well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The libtorch seed (`tch::manual_seed`) of global step `step`; negative steps name the draws
/// outside the steps (the initial weights, the previews).
pub fn step_seed(seed: u64, step: i64) -> i64 {
    (splitmix64(seed ^ splitmix64(step as u64)) >> 1) as i64
}

/// The SplitMix64 generator: its state advances by [`GOLDEN_GAMMA`] per draw.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.0);
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0), by the multiply-high method; the bias is below n / 2⁶⁴.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// The generator of stream `stream` of `seed`: distinct streams give unrelated sequences.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mixer = SplitMix64(seed);
        SplitMix64(mixer.next_u64() ^ stream.wrapping_mul(GOLDEN_GAMMA))
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
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        all
    }
}

/// The order of epoch `epoch`: a permutation of 0..len that depends only on (seed, epoch), by
/// a Fisher–Yates shuffle.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::stream(seed, epoch);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// Whether image `index` is mirrored in epoch `epoch` (`train.hflip`): one fair coin per
/// (seed, epoch, index), drawn apart from the epoch's order.
pub fn flipped(seed: u64, epoch: u64, index: usize) -> bool {
    const FLIP_STREAM: u64 = 0x666c_6970; // "flip"
    splitmix64(splitmix64(seed ^ FLIP_STREAM) ^ splitmix64(epoch) ^ splitmix64(!(index as u64))) >> 63 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    // The numbers below were printed by the code before it moved here (data.rs and train.rs):
    // the move must not change a single draw, or resumed runs and the built-in data change.

    #[test]
    fn splitmix64_and_step_seed_give_the_numbers_of_before() {
        // 0xE220A8397B1DCDAF is also the published first output of splitmix64.c for seed 0.
        assert_eq!([0, 1, 42].map(splitmix64), [0xe220a8397b1dcdaf, 0x910a2dec89025cc1, 0xbdd732262feb6e95]);
        let seeds = [(5, -2), (5, -1), (5, 0), (5, 7), (123_456_789, 1000)].map(|(s, t)| step_seed(s, t));
        assert_eq!(
            seeds,
            [
                3412222091928624038,
                1923329087015097400,
                2258966835411846142,
                4926845964858163915,
                8921210906613421504
            ]
        );
    }

    #[test]
    fn epoch_order_gives_the_order_of_before() {
        assert_eq!(epoch_order(10, 3, 5), [9, 1, 7, 0, 8, 2, 4, 6, 3, 5]);
    }

    #[test]
    fn flips_are_fair_coins_of_seed_epoch_and_index() {
        let count = |seed, epoch| (0..4000).filter(|&i| flipped(seed, epoch, i)).count();
        let n = count(1, 0);
        assert!((1800..2200).contains(&n), "{n} of 4000 mirrored");
        let same = (0..4000).filter(|&i| flipped(1, 0, i) == flipped(1, 1, i)).count();
        assert!((1800..2200).contains(&same), "epochs 0 and 1 agree on {same} of 4000");
        let seeds = (0..4000).filter(|&i| flipped(1, 0, i) == flipped(2, 0, i)).count();
        assert!((1800..2200).contains(&seeds), "seeds 1 and 2 agree on {seeds} of 4000");
    }

    #[test]
    fn the_generator_is_the_hash_of_successive_states() {
        let mut rng = SplitMix64(42);
        assert_eq!(rng.next_u64(), splitmix64(42));
        assert_eq!(rng.next_u64(), splitmix64(42u64.wrapping_add(GOLDEN_GAMMA)));
        assert!((0..1000).all(|_| rng.below(7) < 7 && (0.0..1.0).contains(&rng.unit())));
    }

    #[test]
    fn normal_numbers_have_mean_0_and_variance_1() {
        let mut rng = SplitMix64::stream(3, 0);
        let v: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, variance {var}");
    }

    #[test]
    fn subsets_are_distinct_sorted_and_seeded() {
        let a = SplitMix64::stream(1, 2).subset(100, 30);
        assert_eq!(a.len(), 30);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[29] < 100);
        assert_eq!(a, SplitMix64::stream(1, 2).subset(100, 30));
        assert_ne!(a, SplitMix64::stream(1, 3).subset(100, 30));
    }
}
