//! Sample quality. FID (`fid.rs`) and KID (`kid.rs`) on the features of pytorch-fid's Inception
//! network (`inception.rs`, its weights found or fetched by `inception_files.rs`, features in
//! batches and cached by `features.rs`), as the field reports them; and, without downloaded
//! weights, the sliced Wasserstein distance (SWD) between
//! Laplacian-pyramid patch descriptors of two image sets, as defined by Karras, Aila, Laine &
//! Lehtinen, "Progressive Growing of GANs for Improved Quality, Stability, and Variation"
//! (ICLR 2018), §5 ("multi-scale statistical similarity") and appendix D.
//!
//! The definition, step by step (defaults of [`SwdOptions`] in brackets):
//! 1. Each image gets a Laplacian pyramid (Burt & Adelson 1983, 5-tap binomial filter) from its
//!    own resolution down to [16×16]: for 32×32 images two levels, the 32×32 band-pass and the
//!    16×16 low-pass; for 256×256 five (256, 128, 64, 32, 16). See `pyramid.rs`.
//! 2. From every level of every image, [128] descriptors: [7×7] neighbourhoods of all three
//!    colour channels (147 numbers) at uniformly random positions. See `descriptors.rs`.
//! 3. Each set of descriptors (one level, one image set) is normalised per colour channel by
//!    its own mean and standard deviation.
//! 4. Per level, the sliced Wasserstein distance between the two sets' descriptors with
//!    [4 × 128 = 512] random unit projections: the mean over projections of the mean absolute
//!    difference of the sorted projected values. See `swd.rs` (and `sort.rs`).
//! 5. Reported per level and as the mean over levels, **multiplied by 10³** as the paper's
//!    tables are. Lower is closer; 0 only for identical descriptor sets.
//!
//! Consequences of the definition worth knowing: the per-set normalisation (step 3) makes the
//! distance blind to a per-channel affine change of the colours (a uniform tint or contrast
//! change) except where it clips; a change that mixes channels or alters local structure is
//! measured (a red/blue shift of ±0.3 that clips the white faces of `builtin:pandas` scores
//! 14.2 against a floor of 7.7, see `tests/eval.rs`). The value depends on the number of
//! images: compare distances computed from equal numbers of images only. The distance between
//! two disjoint draws of the same data (the floor) falls about as 1/√N; measured on
//! `builtin:pandas` at 32×32, seed 0: 45.5 at N = 16, 22.7 at 64, 11.0 at 256, 5.9 at 1024,
//! 4.0 at 2048. The paper used 16384 images (2²¹ descriptors per level).
//!
//! Everything is deterministic given the seed: positions, image subsets and directions come
//! from a SplitMix64 generator in Rust, never from libtorch's global generator, so measuring
//! in the middle of a training run does not change the run.

mod descriptors;
pub mod features;
pub mod fid;
mod images;
pub mod inception;
pub mod inception_files;
pub mod kid;
pub mod pyramid;
mod sort;
mod swd;

use anyhow::{ensure, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::rng::SplitMix64;
pub use images::{choose, load_images, load_pixels, native_size, resolve_class};

/// Fewest images per set [`swd()`] accepts. At 16 the floor (two disjoint draws of the same
/// data) is already 45 (× 10⁻³) on `builtin:pandas`, about the distance of a blurred copy at
/// 512 images; comparisons of samplers want a few hundred images or more.
pub const MIN_IMAGES: usize = 16;

/// Scale of every reported distance: the paper's tables give SWD × 10³.
pub const REPORT_SCALE: f64 = 1e3;

/// Images processed at once while sampling descriptors: bounds the pyramid's memory to
/// about 3 × this many floats.
const PIXEL_CHUNK: i64 = 1 << 24;

/// The knobs of the distance; the defaults are the paper's (appendix D).
#[derive(Debug, Clone, PartialEq)]
pub struct SwdOptions {
    /// Descriptors drawn per image and level (the paper: 128).
    pub descriptors_per_image: i64,
    /// Side of a descriptor's neighbourhood (the paper: 7).
    pub patch_size: i64,
    /// The coarsest level's side (the paper: 16).
    pub min_resolution: i64,
    /// Groups of projections (the paper: 4).
    pub repeats: usize,
    /// Random directions per group (the paper: 128).
    pub projections_per_repeat: i64,
}

impl Default for SwdOptions {
    fn default() -> Self {
        Self {
            descriptors_per_image: 128,
            patch_size: 7,
            min_resolution: 16,
            repeats: 4,
            projections_per_repeat: 128,
        }
    }
}

/// The result of [`swd()`], in units of 10⁻³ ([`REPORT_SCALE`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwdReport {
    /// (side of the level, distance), finest level first: e.g. [(32, …), (16, …)].
    pub per_level: Vec<(i64, f64)>,
    /// The mean of the per-level distances (the paper's "avg").
    pub mean: f64,
}

/// The sliced Wasserstein distance between the image sets `a` and `b`, each (N, C, H, W)
/// float (any kind; converted to float32) in [−1, 1], on any one device, per pyramid level and
/// averaged (see the module documentation for the definition), × 10³.
///
/// Both sets need at least [`MIN_IMAGES`] images and the same (C, H, W), with H, W ≥ the
/// patch size. When one set is larger, a random subset of it (chosen by `seed`) of the smaller
/// set's size is used, so the two descriptor sets are equally large. Deterministic given
/// `seed` on a given device; libtorch's global random generator is not used.
pub fn swd(a: &Tensor, b: &Tensor, opts: &SwdOptions, seed: u64) -> Result<SwdReport> {
    check(a, b, opts)?;
    tch::no_grad(|| measure(a, b, opts, seed))
}

/// [`swd()`] after its checks.
fn measure(a: &Tensor, b: &Tensor, opts: &SwdOptions, seed: u64) -> Result<SwdReport> {
    let (na, nb) = (a.size()[0], b.size()[0]);
    let n = na.min(nb);
    let (a, b) = (subset(a, n, SplitMix64::stream(seed, 1)), subset(b, n, SplitMix64::stream(seed, 2)));
    let (side, channels) = (a.size()[2].min(a.size()[3]), a.size()[1]);
    let sides = pyramid::resolutions(side, opts.min_resolution);
    let levels_a = level_descriptors(&a, sides.len(), opts, &mut SplitMix64::stream(seed, 3));
    let levels_b = level_descriptors(&b, sides.len(), opts, &mut SplitMix64::stream(seed, 4));
    let mut directions = SplitMix64::stream(seed, 5);
    let per_level: Vec<(i64, f64)> = sides
        .iter()
        .zip(levels_a.iter().zip(&levels_b))
        .map(|(&side, (da, db))| {
            let (da, db) = (descriptors::normalize(da, channels), descriptors::normalize(db, channels));
            let d =
                swd::sliced_wasserstein(&da, &db, opts.repeats, opts.projections_per_repeat, &mut directions);
            (side, d * REPORT_SCALE)
        })
        .collect();
    let mean = per_level.iter().map(|(_, d)| d).sum::<f64>() / per_level.len() as f64;
    Ok(SwdReport { per_level, mean })
}

/// The preconditions of [`swd()`], as errors naming the value.
fn check(a: &Tensor, b: &Tensor, opts: &SwdOptions) -> Result<()> {
    let (sa, sb) = (a.size(), b.size());
    ensure!(sa.len() == 4 && sb.len() == 4, "image sets must be (N, C, H, W), got {sa:?} and {sb:?}");
    ensure!(
        sa[1..] == sb[1..],
        "image sets of different shapes: {:?} and {:?} (C, H, W)",
        &sa[1..],
        &sb[1..]
    );
    for (name, n) in [("first", sa[0]), ("second", sb[0])] {
        ensure!(n as usize >= MIN_IMAGES, "the {name} set has {n} images; at least {MIN_IMAGES} are needed");
    }
    ensure!(
        a.device() == b.device(),
        "image sets on different devices: {:?} and {:?}",
        a.device(),
        b.device()
    );
    ensure!(
        opts.patch_size >= 1 && opts.descriptors_per_image >= 1,
        "patch_size and descriptors_per_image must be ≥ 1"
    );
    ensure!(
        opts.repeats >= 1 && opts.projections_per_repeat >= 1,
        "repeats and projections_per_repeat must be ≥ 1"
    );
    ensure!(
        sa[2].min(sa[3]) >= opts.patch_size.max(3),
        "images of {}×{} are smaller than the {}×{} neighbourhoods",
        sa[2],
        sa[3],
        opts.patch_size,
        opts.patch_size
    );
    Ok(())
}

/// `n` images of `images`, a random subset when it has more, in their original order.
fn subset(images: &Tensor, n: i64, mut rng: SplitMix64) -> Tensor {
    let total = images.size()[0];
    if total == n {
        return images.shallow_clone();
    }
    let chosen: Vec<i64> = rng.subset(total as usize, n as usize).into_iter().map(|i| i as i64).collect();
    images.index_select(0, &Tensor::from_slice(&chosen).to_device(images.device()))
}

/// The raw descriptors (N·per_image, C·P²) of each of `levels` pyramid levels, finest first,
/// processing the images a chunk at a time.
fn level_descriptors(images: &Tensor, levels: usize, opts: &SwdOptions, rng: &mut SplitMix64) -> Vec<Tensor> {
    let size = images.size();
    let chunk = (PIXEL_CHUNK / (size[1] * size[2] * size[3])).max(1);
    let mut parts: Vec<Vec<Tensor>> = (0..levels).map(|_| Vec::new()).collect();
    let mut start = 0;
    while start < size[0] {
        let len = chunk.min(size[0] - start);
        let pyramid =
            tch::no_grad(|| pyramid::laplacian(&images.narrow(0, start, len).to_kind(Kind::Float), levels));
        for (level, part) in pyramid.iter().zip(parts.iter_mut()) {
            part.push(descriptors::sample(level, opts.descriptors_per_image, opts.patch_size, rng));
        }
        start += len;
    }
    parts.iter().map(|p| Tensor::cat(p, 0)).collect()
}
