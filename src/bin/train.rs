//! Trains the DiT as the original's train.py does; see `dit::train`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dit::cli::DeviceArg;
use dit::config::SamplerKind;

#[derive(Parser)]
#[command(version, about = "Train the DiT on a folder of images (or builtin:pandas); resumes automatically")]
struct Args {
    /// Config file [default: ./config.json, else the original's values]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Image folder, or builtin:pandas / builtin:pandas2 (train.data_path)
    #[arg(long)]
    data: Option<String>,
    /// Number of epochs (train.epoch)
    #[arg(long)]
    epochs: Option<i64>,
    /// Stop cleanly, checkpoint included, once the global step count (resumed steps included) reaches N
    #[arg(long)]
    max_steps: Option<i64>,
    /// Images per step (train.batch_size)
    #[arg(long)]
    batch_size: Option<i64>,
    /// Learning rate (train.lr)
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of every random draw; the same seed gives the same weights on the CPU (train.seed)
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Arithmetic: fp32, or bf16 mixed precision with float32 weights (model.precision)
    #[arg(long, value_enum)]
    precision: Option<dit::config::Precision>,
    /// Weights file; the extension picks .ot, .safetensors or .pth (train.model_save_path)
    #[arg(long)]
    checkpoint: Option<String>,
    /// TensorBoard log folder (train.logdir)
    #[arg(long)]
    logdir: Option<String>,
    /// Decoding threads (train.num_workers)
    #[arg(long)]
    num_workers: Option<i64>,
    /// Preview every N epochs, 0 = off (train.preview.every_epochs)
    #[arg(long)]
    preview_every: Option<i64>,
    /// Preview sampler (train.preview.sampler)
    #[arg(long, value_enum)]
    preview_sampler: Option<PreviewSampler>,
    /// Preview denoising steps (train.preview.steps)
    #[arg(long)]
    preview_steps: Option<i64>,
    /// Where to write the preview grid PNG [default: beside the checkpoint, <name>.preview.png]
    #[arg(long)]
    preview_png: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PreviewSampler {
    Ddpm,
    Ddim,
}

fn main() -> ExitCode {
    let args = Args::parse();
    dit::cli::run(|| {
        let mut cfg = dit::Config::resolve(args.config.as_deref())?;
        let t = &mut cfg.train;
        if let Some(v) = args.data.clone() {
            t.data_path = v;
        }
        if let Some(v) = args.epochs {
            t.epoch = v;
        }
        if let Some(v) = args.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = args.lr {
            t.lr = v;
        }
        if args.seed.is_some() {
            t.seed = args.seed;
        }
        if let Some(v) = args.checkpoint.clone() {
            t.model_save_path = v;
        }
        if let Some(v) = args.logdir.clone() {
            t.logdir = v;
        }
        if let Some(v) = args.num_workers {
            t.num_workers = v;
        }
        if let Some(v) = args.preview_every {
            t.preview.every_epochs = v;
        }
        if let Some(v) = args.preview_sampler {
            t.preview.sampler = match v {
                PreviewSampler::Ddpm => SamplerKind::Ddpm,
                PreviewSampler::Ddim => SamplerKind::Ddim,
            };
        }
        if let Some(v) = args.preview_steps {
            t.preview.steps = v;
        }
        if let Some(v) = args.precision {
            cfg.model.precision = v;
        }
        cfg.validate().context("after applying the command-line flags")?;
        if let Some(m) = args.max_steps {
            anyhow::ensure!(m > 0, "--max-steps must be a positive integer, got {m}");
        }
        let opts = dit::train::RunOptions {
            device: args.device.resolve()?,
            max_steps: args.max_steps,
            preview_png: args.preview_png.clone(),
        };
        dit::train::run(cfg, &opts).map(|_| ())
    })
}
