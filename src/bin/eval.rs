//! Measures how close a folder of generated images is to a data set: the sliced Wasserstein
//! distance of Karras et al. 2018 (`dit::quality`), per Laplacian-pyramid level and averaged,
//! × 10³ (lower is closer).
//!
//!   eval --samples DIR --data DIR_OR_builtin:NAME [--class NAME] [--num N] [--seed S] [--json]
//!   eval --autoencoder NAME --size S --data DIR [...]   the autoencoder's reconstructions of the
//!                                                       data against the data: the floor of a
//!                                                       latent-space model

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use dit::data::Dataset;
use dit::quality::{self, SwdOptions, SwdReport, MIN_IMAGES};

#[derive(Parser)]
#[command(
    version,
    about = "Sliced Wasserstein distance (Karras et al. 2018) between generated images and a data set"
)]
struct Args {
    /// Folder of generated images (e.g. from `sample --out-dir`), all square and of one size.
    #[arg(long, required_unless_present = "autoencoder", conflicts_with = "autoencoder")]
    samples: Option<PathBuf>,
    /// Instead of samples, score this autoencoder's reconstructions of the data (encoded and
    /// decoded at --size): the closest a model in its latent space can come.
    #[arg(long, value_name = "NAME", requires = "size")]
    autoencoder: Option<String>,
    /// Folder of the autoencoder's weight files [default: $DIT_AUTOENCODER_DIR, else
    /// ~/.cache/dit/autoencoders]
    #[arg(long)]
    autoencoder_dir: Option<PathBuf>,
    /// Reference images: a folder, or builtin:pandas / builtin:pandas2; resized and cropped to
    /// the samples' size as training does.
    #[arg(long)]
    data: String,
    /// Compare with this class of the data only (a class name or a label number).
    #[arg(long)]
    class: Option<String>,
    /// Images per side [default: all the samples]; the data side uses as many, evenly spaced.
    #[arg(long, allow_negative_numbers = true)]
    num: Option<i64>,
    /// Seed of the descriptor positions and projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side the images are compared at [default: the samples' own; required for builtin samples].
    #[arg(long, allow_negative_numbers = true)]
    size: Option<i64>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args: Args = dit::cli::parse_args();
    dit::cli::run(|| run(&args))
}

fn run(args: &Args) -> Result<()> {
    let num = args.num.map_or(Ok(usize::MAX), |n| {
        ensure!(n >= MIN_IMAGES as i64, "--num {n}: at least {MIN_IMAGES} images are needed");
        Ok(n as usize)
    })?;
    if let Some(name) = &args.autoencoder {
        return reconstructions(args, name, num);
    }
    let samples = args.samples.as_ref().expect("clap requires --samples without --autoencoder");
    let samples_path = samples.to_str().context("--samples: the path is not valid UTF-8")?;
    let size = match args.size {
        Some(size) => size,
        None => quality::native_size(&Dataset::open(samples_path, 1)?)?
            .with_context(|| format!("--samples {samples_path} has no native size: give --size"))?,
    };
    let samples = Dataset::open(samples_path, size)?;
    let data = Dataset::open(&args.data, size)?;
    let class = args.class.as_deref().map(|c| quality::resolve_class(&data, c)).transpose()?;
    let a = quality::load_images(&samples, num, None)?;
    let n = a.size()[0] as usize;
    ensure!(n >= MIN_IMAGES, "--samples {samples_path}: {n} images; at least {MIN_IMAGES} are needed");
    let b = quality::load_images(&data, n, class)?;
    let m = b.size()[0] as usize;
    ensure!(m >= MIN_IMAGES, "--data {}: {m} images; at least {MIN_IMAGES} are needed", args.data);
    let report = quality::swd(&a, &b, &SwdOptions::default(), args.seed)?;
    print_report(args, &report, n.min(m), size);
    Ok(())
}

/// `--autoencoder`: the data (up to `num` images) encoded and decoded at `--size`, against the
/// same images.
fn reconstructions(args: &Args, name: &str, num: usize) -> Result<()> {
    let variant: dit::config::Variant = name.parse().map_err(|e| anyhow::anyhow!("--autoencoder: {e}"))?;
    let size = args.size.expect("clap requires --size with --autoencoder");
    ensure!(size > 0 && size % 8 == 0, "--size {size}: the autoencoder needs a multiple of 8");
    let located = dit::autoencoder::locate(variant, args.autoencoder_dir.as_deref())?;
    let device = tch::Device::cuda_if_available();
    let encoder = dit::autoencoder::load_encoder(&located, variant, device)?;
    let decoder = dit::autoencoder::Decoder::load(&located.decoder, variant, device)?.channels_last();
    let data = Dataset::open(&args.data, size)?;
    let class = args.class.as_deref().map(|c| quality::resolve_class(&data, c)).transpose()?;
    let images = quality::load_images(&data, num, class)?; // (N, 3, S, S) in [−1, 1]
    let n = images.size()[0] as usize;
    ensure!(n >= MIN_IMAGES, "--data {}: {n} images; at least {MIN_IMAGES} are needed", args.data);
    let parts: Vec<tch::Tensor> = (0..n as i64)
        .step_by(8)
        .map(|s| {
            let x = (images.narrow(0, s, 8.min(n as i64 - s)) + 1.0) / 2.0;
            (decoder.decode(&encoder.encode(&x)) * 2.0 - 1.0).to_device(tch::Device::Cpu)
        })
        .collect();
    let rebuilt = tch::Tensor::cat(&parts, 0);
    let report = quality::swd(&rebuilt, &images, &SwdOptions::default(), args.seed)?;
    print_report(args, &report, n, size);
    Ok(())
}

fn print_report(args: &Args, report: &SwdReport, n: usize, size: i64) {
    if args.json {
        let levels: Vec<_> = report
            .per_level
            .iter()
            .map(|(side, d)| serde_json::json!({"resolution": side, "swd": d}))
            .collect();
        let line = serde_json::json!({
            "swd": report.mean, "levels": levels, "unit": "1e-3", "images": n, "size": size,
            "samples": args.samples, "autoencoder": args.autoencoder, "data": args.data, "class": args.class, "seed": args.seed,
        });
        println!("{line}");
        return;
    }
    let class = args.class.as_ref().map(|c| format!(" (class {c})")).unwrap_or_default();
    let what = match (&args.samples, &args.autoencoder) {
        (Some(samples), _) => samples.display().to_string(),
        (None, name) => format!("{} reconstructions", name.as_deref().unwrap_or_default()),
    };
    println!("{what} vs {}{class}: {n} images each, {size}×{size}, seed {}", args.data, args.seed);
    for (side, d) in &report.per_level {
        println!("  level {side:>4}×{side:<4} SWD×1e3 {d:8.2}");
    }
    println!("SWD×1e3 (mean of {} levels): {:.2}", report.per_level.len(), report.mean);
}
