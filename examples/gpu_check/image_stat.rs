//! Images or noise? The high-frequency ratio of an image x (C, H, W):
//!
//!   R(x) = mean((x[i, j+1] − x[i, j])², (x[i+1, j] − x[i, j])²) / (2·Var(x))
//!
//! Neighbouring pixels of independent noise differ by two variances on average, so R ≈ 1 for
//! noise (clamped or not); in a photo or a drawing neighbours are alike and R is far below 1.
//! The threshold is calibrated at every run: the geometric mean of the 99th percentile of R
//! over the training data and the 1st percentile over pure noise (clamped N(0, 1) images of
//! the same size). The samples pass when at least 90% of them fall below it.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use dit::data::Dataset;
use tch::{Device, Kind, Tensor};

/// Images of each calibration set.
const CALIBRATION_IMAGES: usize = 256;

/// R of every image of `x` (N, C, H, W) in [−1, 1], as f64.
pub fn ratios(x: &Tensor) -> Vec<f64> {
    let x = x.to_kind(Kind::Double);
    let (h, w) = (x.size()[2], x.size()[3]);
    let dx = (x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1)).square().mean_dim(
        &[1i64, 2, 3][..],
        false,
        Kind::Double,
    );
    let dy = (x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1)).square().mean_dim(
        &[1i64, 2, 3][..],
        false,
        Kind::Double,
    );
    let var = x.flatten(1, -1).var_dim(&[1i64][..], false, false).clamp_min(1e-12);
    Vec::<f64>::try_from(((dx + dy) / 2.0) / (var * 2.0)).expect("a 1-D double tensor")
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The first images of `data` at `size`, as (N, 3, I, I) in [−1, 1].
fn data_images(data: &str, size: i64) -> Result<Tensor> {
    let ds = Dataset::open(data, size)?;
    let n = ds.len().min(CALIBRATION_IMAGES);
    let images: Vec<Tensor> = (0..n)
        .map(|i| Ok(Tensor::from_slice(&ds.load(i)?).view([size, size, 3]).permute([2, 0, 1])))
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&images, 0).to_kind(Kind::Float) / 127.5 - 1.0)
}

/// Prints the calibration and the verdict on the samples in `file`; returns whether they pass.
pub fn check(file: &Path, data: &str) -> Result<bool> {
    let samples = Tensor::read_safetensors(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .into_iter()
        .find(|(n, _)| n == "images")
        .with_context(|| format!("{}: no tensor named images", file.display()))?
        .1;
    ensure!(samples.dim() == 4, "{}: images must be (N, C, I, I), got {:?}", file.display(), samples.size());
    let size = samples.size()[2];
    let data_r = ratios(&data_images(data, size)?);
    tch::manual_seed(11);
    let noise = Tensor::randn([CALIBRATION_IMAGES as i64, 3, size, size], (Kind::Float, Device::Cpu))
        .clamp(-1.0, 1.0);
    let noise_r = ratios(&noise);
    let (hi_data, lo_noise) = (percentile(&data_r, 0.99), percentile(&noise_r, 0.01));
    ensure!(hi_data < lo_noise, "the statistic does not separate {data} (99th percentile {hi_data:.3}) from noise (1st percentile {lo_noise:.3})");
    let threshold = (hi_data * lo_noise).sqrt();
    let r = ratios(&samples);
    let below = r.iter().filter(|&&x| x < threshold).count();
    let pass = below * 10 >= r.len() * 9;
    println!(
        "{} samples vs noise: {below}/{} below the threshold {threshold:.3} (median R {:.3}; calibration: {data} median {:.3}, 99th pct {hi_data:.3}; noise median {:.3}, 1st pct {lo_noise:.3})",
        if pass { "PASS" } else { "FAIL" },
        r.len(),
        percentile(&r, 0.5),
        percentile(&data_r, 0.5),
        percentile(&noise_r, 0.5),
    );
    Ok(pass)
}
