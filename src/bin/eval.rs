//! Measures how close a folder of generated images is to a data set (`dit::quality`): the sliced
//! Wasserstein distance of Karras et al. 2018 per Laplacian-pyramid level and averaged, × 10³,
//! and with `--metric fid|kid|all` FID and KID on pytorch-fid's Inception features (lower is
//! closer for all three).
//!
//!   eval --samples DIR --data DIR_OR_builtin:NAME [--metric swd|fid|kid|all] [--class NAME]
//!        [--num N] [--seed S] [--inception-dir DIR] [--json]
//!   eval --autoencoder NAME --size S --data DIR [...]   the autoencoder's reconstructions of the
//!                                                       data against the data: the floor of a
//!                                                       latent-space model

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::{Parser, ValueEnum};
use dit::data::Dataset;
use dit::quality::features::{self, cache_path, cached};
use dit::quality::fid::{frechet_distance, Statistics};
use dit::quality::inception::Inception;
use dit::quality::kid::{kid, Kid, KidOptions};
use dit::quality::{self, inception_files, SwdOptions, SwdReport, MIN_IMAGES};
use tch::{Kind, Tensor};

#[derive(Parser)]
#[command(
    version,
    about = "Distance between generated images and a data set: SWD (Karras et al. 2018), FID, KID"
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
    /// Which distances: swd (no download), fid and kid (pytorch-fid's Inception network, its
    /// weights fetched once), or all three.
    #[arg(long, value_enum, default_value_t = Metric::Swd)]
    metric: Metric,
    /// Folder of pytorch-fid's weight file pt_inception-2015-12-05-6726825d.pth [default:
    /// $DIT_INCEPTION_DIR, else ~/.cache/dit/inception; downloaded there when missing]
    #[arg(long)]
    inception_dir: Option<PathBuf>,
    /// Feature vectors a KID subset draws from each side (torch-fidelity's 1000), capped at the
    /// number of images: below it every subset is every image, and the standard deviation is 0.
    #[arg(long, default_value_t = KidOptions::default().subset_size)]
    kid_subset_size: usize,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Metric {
    Swd,
    Fid,
    Kid,
    All,
}

impl Metric {
    fn swd(self) -> bool {
        matches!(self, Metric::Swd | Metric::All)
    }
    fn fid(self) -> bool {
        matches!(self, Metric::Fid | Metric::All)
    }
    fn kid(self) -> bool {
        matches!(self, Metric::Kid | Metric::All)
    }
}

/// What was measured.
#[derive(Default)]
struct Report {
    swd: Option<SwdReport>,
    fid: Option<f64>,
    kid: Option<Kid>,
}

/// One side of the comparison: images (uint8, or floats in [0, 1]), and for the data side what
/// they were read from, which keys the cache of their features.
struct Side<'a> {
    images: Tensor,
    source: Option<Source<'a>>,
}

/// The images `chosen` of `dataset` (of `class`), opened from `data`.
struct Source<'a> {
    data: &'a str,
    dataset: &'a Dataset,
    chosen: Vec<usize>,
    class: Option<i64>,
}

/// Images in SWD's range, [−1, 1].
fn swd_range(images: &Tensor) -> Tensor {
    if images.kind() == Kind::Uint8 {
        dit::data::to_model_range(images)
    } else {
        images * 2.0 - 1.0
    }
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
    let a = quality::load_pixels(&samples, &quality::choose(&samples, num, None)?)?;
    let n = a.size()[0] as usize;
    ensure!(n >= MIN_IMAGES, "--samples {samples_path}: {n} images; at least {MIN_IMAGES} are needed");
    let b = data_side(args, &data, n, class)?;
    let report = measure(args, &Side { images: a, source: None }, &b)?;
    print_report(args, &report, n.min(b.images.size()[0] as usize), size);
    Ok(())
}

/// Up to `num` images of the data (of `class`), with what they were read from.
fn data_side<'a>(args: &'a Args, data: &'a Dataset, num: usize, class: Option<i64>) -> Result<Side<'a>> {
    let chosen = quality::choose(data, num, class)?;
    let images = quality::load_pixels(data, &chosen)?;
    let m = images.size()[0] as usize;
    ensure!(m >= MIN_IMAGES, "--data {}: {m} images; at least {MIN_IMAGES} are needed", args.data);
    Ok(Side { images, source: Some(Source { data: &args.data, dataset: data, chosen, class }) })
}

/// The distances `--metric` asks for between the samples `a` and the data `b`.
fn measure(args: &Args, a: &Side, b: &Side) -> Result<Report> {
    let mut report = Report::default();
    if args.metric.swd() {
        report.swd = Some(quality::swd(
            &swd_range(&a.images),
            &swd_range(&b.images),
            &SwdOptions::default(),
            args.seed,
        )?);
    }
    if args.metric.fid() || args.metric.kid() {
        let weights = inception_files::locate(args.inception_dir.as_deref())?;
        let net = Inception::load(&weights, tch::Device::cuda_if_available())?;
        let progress = !args.json;
        let fa = features::features(&net, &a.images, "features of the samples", progress);
        let compute = || Ok(features::features(&net, &b.images, "features of the data", progress));
        let fb = match &b.source {
            Some(src) => {
                let sha256 = dit::download::sha256_file(&weights)?;
                cached(&cache_path(src.data, src.dataset, &src.chosen, src.class, &sha256), compute)?
            }
            None => compute()?,
        };
        if args.metric.fid() {
            report.fid = Some(frechet_distance(&Statistics::of(&fa)?, &Statistics::of(&fb)?)?);
        }
        if args.metric.kid() {
            let opts = KidOptions { subset_size: args.kid_subset_size, ..KidOptions::default() };
            report.kid = Some(kid(&fa, &fb, &opts, args.seed)?);
        }
    }
    Ok(report)
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
    let b = data_side(args, &data, num, class)?; // (N, 3, S, S) uint8
    let n = b.images.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(8)
        .map(|s| {
            let x = b.images.narrow(0, s, 8.min(n - s)).to_kind(Kind::Float) / 255.0;
            decoder.decode(&encoder.encode(&x)).to_device(tch::Device::Cpu)
        })
        .collect();
    let a = Side { images: Tensor::cat(&parts, 0), source: None };
    let report = measure(args, &a, &b)?;
    print_report(args, &report, n as usize, size);
    Ok(())
}

fn print_report(args: &Args, report: &Report, n: usize, size: i64) {
    if args.json {
        let mut line = serde_json::json!({
            "images": n, "size": size, "samples": args.samples, "autoencoder": args.autoencoder,
            "data": args.data, "class": args.class, "seed": args.seed,
        });
        if let Some(swd) = &report.swd {
            let levels: Vec<_> = swd
                .per_level
                .iter()
                .map(|(side, d)| serde_json::json!({"resolution": side, "swd": d}))
                .collect();
            line["swd"] = swd.mean.into();
            line["levels"] = levels.into();
            line["unit"] = "1e-3".into();
        }
        if let Some(fid) = report.fid {
            line["fid"] = fid.into();
        }
        if let Some(kid) = report.kid {
            line["kid"] = kid.mean.into();
            line["kid_std"] = kid.std.into();
            line["kid_subset_size"] = kid.subset_size.into();
        }
        println!("{line}");
        return;
    }
    let class = args.class.as_ref().map(|c| format!(" (class {c})")).unwrap_or_default();
    let what = match (&args.samples, &args.autoencoder) {
        (Some(samples), _) => samples.display().to_string(),
        (None, name) => format!("{} reconstructions", name.as_deref().unwrap_or_default()),
    };
    println!("{what} vs {}{class}: {n} images each, {size}×{size}, seed {}", args.data, args.seed);
    if let Some(swd) = &report.swd {
        for (side, d) in &swd.per_level {
            println!("  level {side:>4}×{side:<4} SWD×1e3 {d:8.2}");
        }
        println!("SWD×1e3 (mean of {} levels): {:.2}", swd.per_level.len(), swd.mean);
    }
    if let Some(fid) = report.fid {
        println!("FID: {fid:.4}");
    }
    if let Some(kid) = report.kid {
        let subsets = KidOptions::default().subsets;
        println!("KID: {:.6} ± {:.6} ({subsets} subsets of {})", kid.mean, kid.std, kid.subset_size);
    }
}
