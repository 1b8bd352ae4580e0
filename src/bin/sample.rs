//! Generates images with a trained DiT, with the original's DDPM loop (the same images as the
//! original for the same seed), or with DDIM or DPM-Solver++ in fewer steps; see
//! `dit::generate` for the seed contract.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use dit::cli::DeviceArg;
use dit::config::{Precision, Prediction, Process, RuntimeConfig};
use dit::generate::{self, Outputs, Request};
use dit::sampling::{self, SampleOptions, SamplerKind};

/// Columns of the `--progress` grid.
const PROGRESS_COLUMNS: i64 = 16;

#[derive(Parser)]
#[command(version, about = "Generate images with a trained DiT (DDPM as the original, DDIM or DPM-Solver++)")]
struct Args {
    /// Weight file (.ot, .safetensors, .pth) or training state (.state.safetensors); a
    /// training state's EMA weights are used when it has them.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Use the raw weights even when the training state holds EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Model and diffusion configuration [default: the training state's, else the sections a
    /// .safetensors weight file from train records, else ./config.json, else the original's]
    #[arg(long)]
    config: Option<PathBuf>,
    /// ddpm: the original's sampler, all max_t steps; ddim and dpmpp_2m (DPM-Solver++ 2M):
    /// the same model in fewer steps. euler and heun: for a flow model (diffusion.process
    /// flow). [default: ddpm; euler for a flow model]
    #[arg(long, value_enum)]
    sampler: Option<SamplerKind>,
    /// What the model predicts [default: the training state's, or the one a .safetensors
    /// weight file records; for a .ot or .pth file alone, the config's, whose default is the
    /// original's epsilon]
    #[arg(long, value_enum)]
    prediction: Option<Prediction>,
    /// Denoising steps [default: max_t for ddpm, 50 for ddim and euler, 20 for dpmpp_2m, 25 for heun]
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// DDIM's eta: 1 adds DDPM-like noise every step, 0 is deterministic [default: 1]
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f64>,
    /// Classifier-free guidance weight W (ε = ε_uncond + W·(ε_cond − ε_uncond)); 1 = none.
    /// Needs a model trained with train.cfg_dropout > 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    guidance: f64,
    /// Flow samplers: shift the time grid, t' = S·t / (1 + (S − 1)·t); S < 1 spends more steps
    /// near the noise (LightningDiT samples with 0.3) [default: evenly spaced]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    timestep_shift: Option<f64>,
    /// Flow samplers: guide only from time T on (0 = the noise, 1 = the data); before it the
    /// conditional model alone (LightningDiT uses 0.11) [default: guide every step]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    cfg_interval_start: Option<f64>,
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
    /// Folder of the autoencoder's weight files, for a latent-space model [default:
    /// $DIT_AUTOENCODER_DIR, else ~/.cache/dit/autoencoders]
    #[arg(long)]
    autoencoder_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = dit::cli::parse_args();
    dit::cli::run(|| run(&args))
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.num >= 1, "--num must be at least 1, got {}", args.num);
    let batch_size = args.batch_size.unwrap_or(args.num);
    ensure!(batch_size >= 1, "--batch-size must be at least 1, got {batch_size}");
    let eta = args.eta.unwrap_or(sampling::DEFAULT_DDIM_ETA);
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
    if let Some(p) = args.prediction {
        ensure!(
            loaded.config.diffusion.process == Process::Ddpm,
            "--prediction applies to DDPM models; this one is a flow model (it predicts the velocity)"
        );
        loaded.set_prediction(p)?;
    }
    let process = loaded.config.diffusion.process;
    let sampler = args.sampler.unwrap_or(match process {
        Process::Ddpm => SamplerKind::Ddpm,
        Process::Flow => SamplerKind::Euler,
    });
    sampler.check_process(process).with_context(|| format!("--sampler {}", sampler.name()))?;
    if sampler != SamplerKind::Ddim && args.eta.is_some() {
        bail!("--eta applies to --sampler ddim only");
    }
    let precision = args.precision.unwrap_or(loaded.config.runtime.precision);
    loaded.model.set_runtime(&RuntimeConfig { precision, ..loaded.config.runtime });
    let (label, label_text) = loaded.resolve_label(&args.label)?;
    let max_t = loaded.config.diffusion.max_t;
    let steps = args.steps.unwrap_or(sampler.default_steps(max_t));
    let sampler_name = sampler.name();
    sampler.check(steps, eta, max_t).with_context(|| format!("--sampler {sampler_name} --steps {steps}"))?;
    let predicting = match process {
        Process::Ddpm => loaded.config.diffusion.prediction.name(),
        Process::Flow => "the flow's velocity",
    };
    println!("weights: {} (predicting {predicting})", loaded.description);

    let keep = if args.progress.is_some() {
        sampling::evenly_spaced_states(steps, PROGRESS_COLUMNS)
    } else {
        vec![]
    };
    let opts = SampleOptions {
        sampler,
        steps,
        eta,
        keep,
        guidance: Some(args.guidance),
        shift: args.timestep_shift,
        cfg_interval_start: args.cfg_interval_start,
    };
    opts.check_flow_options()?;
    let request = Request { num: args.num, label, seed: args.seed, batch_size };
    let decoder = latent_decoder(&loaded, args.autoencoder_dir.as_deref(), device)?;
    let (images, kept) = generate::generate(&loaded, &opts, &request, device, decoder.as_ref())?;
    println!(
        "sampled {} image(s) of label {label_text} with {sampler_name} ({steps} steps{}), seed {}, on {device:?}",
        args.num,
        match sampler {
            SamplerKind::Ddim => format!(", eta {eta}"),
            SamplerKind::Euler | SamplerKind::Heun => match args.timestep_shift {
                Some(s) => format!(", timestep shift {s}"),
                None => String::new(),
            },
            SamplerKind::Ddpm | SamplerKind::DpmPP2m => String::new(),
        },
        args.seed
    );

    let grid = (args.out_dir.is_none() && args.tensor_out.is_none()).then(|| PathBuf::from("samples.png"));
    let outputs = Outputs {
        grid: args.out.clone().or(grid),
        dir: args.out_dir.clone(),
        progress: args.progress.clone(),
        tensor: args.tensor_out.clone(),
    };
    generate::write_outputs(&outputs, &images, &kept)
}

/// The decoder of a latent-space model (`None` in pixel space), with the normalisation it
/// trained under; a decoder file other than the one it trained with is said, not refused.
fn latent_decoder(
    loaded: &dit::checkpoint::Loaded,
    dir: Option<&std::path::Path>,
    device: tch::Device,
) -> Result<Option<dit::autoencoder::LatentDecoder>> {
    let (Some(variant), Some(latent)) = (loaded.config.model.autoencoder, &loaded.latent) else {
        return Ok(None);
    };
    let located = dit::autoencoder::locate(variant, dir)?;
    if located.decoder_sha256 != latent.decoder_sha256 {
        eprintln!(
            "note: decoding with {} (sha256 {}), not the decoder the model trained beside (sha256 {})",
            located.decoder.display(),
            located.decoder_sha256,
            latent.decoder_sha256
        );
    }
    let decoder = dit::autoencoder::LatentDecoder::load(&located, variant, latent.stats.clone(), device)?;
    println!("decoding with {variant} ({})", located.decoder.display());
    Ok(Some(decoder))
}
