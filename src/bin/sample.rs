//! Generates images with a trained DiT, with the original's DDPM loop (the same images as the
//! original for the same seed) or with DDIM in fewer steps.
//!
//! Seed contract: after `tch::manual_seed(seed)` the noise of all `--num` images is one
//! `Tensor::randn([num, C, I, I])` on the CPU, moved to the device afterwards, so `--num N`
//! draws what the original's `torch.randn(N, C, I, I)` draws. Exact parity with the original
//! (CPU, ddpm) holds when `--batch-size` equals `--num` (the default): smaller batches keep
//! the same initial noise but draw the per-step noise batch after batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use dit::cli::DeviceArg;
use dit::config::{Precision, RuntimeConfig};
use dit::diffusion::Schedule;
use dit::progress::Progress;
use dit::sampling::{self, Normalize, SampleOptions, SamplerKind};
use tch::{Device, Kind, Tensor};

/// Columns of the `--progress` grid.
const PROGRESS_COLUMNS: i64 = 16;

#[derive(Parser)]
#[command(version, about = "Generate images with a trained DiT (DDPM as the original, or DDIM)")]
struct Args {
    /// Weight file (.ot, .safetensors, .pth) or training state (.state.safetensors); a
    /// training state's EMA weights are used when it has them.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Use the raw weights even when the training state holds EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Model and diffusion configuration [default: the training state's, else ./config.json,
    /// else the original's]
    #[arg(long)]
    config: Option<PathBuf>,
    /// ddpm: the original's sampler, all max_t steps; ddim: deterministic (eta 0) in fewer steps.
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddpm)]
    sampler: SamplerKind,
    /// Denoising steps [default: max_t for ddpm, 50 for ddim]
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// DDIM's eta: 0 is deterministic, 1 adds DDPM-like noise [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f64>,
    /// Classifier-free guidance weight W (ε = ε_uncond + W·(ε_cond − ε_uncond)); 1 = none.
    /// Needs a model trained with train.cfg_dropout > 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    guidance: f64,
    /// Seed of the random numbers (noise drawn as the original draws it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of images.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    num: i64,
    /// Class label of every image: a number, or a class name the checkpoint records.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    label: String,
    /// Images per forward pass [default: --num, which the seed parity with the original needs]
    #[arg(long, allow_negative_numbers = true)]
    batch_size: Option<i64>,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Arithmetic: fp32, or bf16 mixed precision [default: the checkpoint config's]
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// PNG grid of all images [default: samples.png unless --out-dir or --tensor-out is given]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for one PNG per image (0000.png, 0001.png, …).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// PNG of the denoising: one row per image, 16 states from the noise to the result.
    #[arg(long)]
    progress: Option<PathBuf>,
    /// The final images as float32 in [-1, 1], (N, C, I, I), under the key "images".
    #[arg(long, value_name = "FILE.safetensors")]
    tensor_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    dit::cli::run(|| run(&args))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.num >= 1, "--num must be at least 1, got {}", args.num);
    let batch_size = args.batch_size.unwrap_or(args.num);
    ensure!(batch_size >= 1, "--batch-size must be at least 1, got {batch_size}");
    let sampler = args.sampler;
    if sampler == SamplerKind::Ddpm && args.eta.is_some() {
        bail!("--eta applies to --sampler ddim only");
    }
    let eta = args.eta.unwrap_or(0.0);
    ensure!(eta >= 0.0 && eta.is_finite(), "--eta must be a number ≥ 0, got {eta}");
    if let Some(path) = &args.tensor_out {
        ensure!(
            path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")),
            "--tensor-out {}: the name must end in .safetensors",
            path.display()
        );
    }
    let device = args.device.resolve()?;

    let mut loaded =
        dit::checkpoint::load_for_inference(&args.checkpoint, args.config.as_deref(), !args.no_ema, device)?;
    let precision = args.precision.unwrap_or(loaded.config.runtime.precision);
    loaded.model.set_runtime(&RuntimeConfig { precision, ..loaded.config.runtime });
    let (label, label_text) = loaded.resolve_label(&args.label)?;
    let max_t = loaded.config.diffusion.max_t;
    let steps = args.steps.unwrap_or(sampler.default_steps(max_t));
    let sampler_name = sampler.name();
    sampler.check(steps, eta, max_t).with_context(|| format!("--sampler {sampler_name} --steps {steps}"))?;
    println!("weights: {}", loaded.description);

    let schedule = Schedule::new(&loaded.config.diffusion, device);
    let m = &loaded.config.model;
    let keep = if args.progress.is_some() {
        sampling::evenly_spaced_states(steps, PROGRESS_COLUMNS)
    } else {
        vec![]
    };
    let opts = SampleOptions { sampler, steps, eta, keep, guidance: Some(args.guidance) };

    tch::manual_seed(args.seed as i64);
    let noise = Tensor::randn([args.num, m.channel, m.img_size, m.img_size], (Kind::Float, Device::Cpu));
    let labels = Tensor::full([args.num], label, (Kind::Int64, Device::Cpu));
    let chunks = (args.num + batch_size - 1) / batch_size;
    let total = steps as u64 * chunks as u64;
    let mut bar = Progress::new("sampling", total, 0);
    let (images, kept) = sampling::sample_in_batches(
        &loaded.model,
        &schedule,
        &opts,
        &noise,
        &labels,
        batch_size,
        &mut |done| bar.set(done, || format!("sampling: {done}/{total} steps")),
    )?;
    bar.finish();
    println!(
        "sampled {} image(s) of label {label_text} with {sampler_name} ({steps} steps{}), seed {}, on {device:?}",
        args.num,
        match sampler {
            SamplerKind::Ddim => format!(", eta {eta}"),
            SamplerKind::Ddpm => String::new(),
        },
        args.seed
    );

    write_outputs(args, &images, &kept)
}

fn write_outputs(args: &Args, images: &Tensor, kept: &[Tensor]) -> Result<()> {
    let num = images.size()[0];
    let default_out =
        (args.out_dir.is_none() && args.tensor_out.is_none()).then(|| PathBuf::from("samples.png"));
    if let Some(path) = args.out.clone().or(default_out) {
        let nrow = (num as f64).sqrt().ceil() as i64;
        sampling::save_png(&sampling::to_image_grid(images, nrow, Normalize::Fixed), &path)?;
        println!("wrote {} (grid of {num})", path.display());
    }
    if let Some(dir) = &args.out_dir {
        for i in 0..num {
            sampling::save_png(&sampling::to_image(&images.get(i)), &dir.join(format!("{i:04}.png")))?;
        }
        println!("wrote {num} PNG file(s) to {}", dir.display());
    }
    if let Some(path) = &args.progress {
        sampling::save_png(&sampling::progress_grid(kept), path)?;
        println!("wrote {} (denoising progress)", path.display());
    }
    if let Some(path) = &args.tensor_out {
        dit::checkpoint::write_tensors(path, &[("images".to_string(), images.to_kind(Kind::Float))])?;
        println!("wrote {} (\"images\", float32 in [-1, 1])", path.display());
    }
    Ok(())
}
