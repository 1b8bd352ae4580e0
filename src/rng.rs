//! The seeds every random draw of a run derives from, so that a run is a function of its seed
//! and resumes exactly.

/// SplitMix64 (Steele et al. 2014): a fast, well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The libtorch seed of global step `step` (−1: the initialisation, −2: the previews).
pub fn step_seed(seed: u64, step: i64) -> i64 {
    (splitmix64(seed ^ splitmix64(step as u64)) >> 1) as i64
}
