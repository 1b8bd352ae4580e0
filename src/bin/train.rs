//! Trains the DiT as the original's train.py does; see `dit::train`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dit::cli::{DeviceArg, TrainOverrides};

#[derive(Parser)]
#[command(version, about = "Train the DiT on a folder of images (or builtin:pandas); resumes automatically")]
struct Args {
    /// Config file [default: ./config.json, else the original's values]
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: TrainOverrides,
    /// Stop cleanly, checkpoint included, once the global step count (resumed steps included) reaches N
    #[arg(long)]
    max_steps: Option<i64>,
    /// Resume even if the data's classes are not those the checkpoint was trained on (fine-tuning on new data)
    #[arg(long)]
    allow_data_change: bool,
    /// Where to train
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Where to write the preview grid PNG [default: beside the checkpoint, <name>.preview.png]
    #[arg(long)]
    preview_png: Option<PathBuf>,
    /// Folder of the autoencoder's weight files (model.autoencoder) [default:
    /// $DIT_AUTOENCODER_DIR, else ~/.cache/dit/autoencoders, where taef2 is downloaded]
    #[arg(long)]
    autoencoder_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = dit::cli::parse_args();
    dit::cli::run(|| {
        let mut cfg = dit::Config::resolve(args.config.as_deref())?;
        args.overrides.apply(&mut cfg)?;
        if let Some(m) = args.max_steps {
            anyhow::ensure!(m > 0, "--max-steps must be a positive integer, got {m}");
        }
        let opts = dit::train::RunOptions {
            device: args.device.resolve()?,
            max_steps: args.max_steps,
            preview_png: args.preview_png.clone(),
            allow_data_change: args.allow_data_change,
            world: dit::distributed::World::from_env()?,
            autoencoder_dir: args.autoencoder_dir.clone(),
        };
        dit::train::run(cfg, &opts).map(|_| ())
    })
}
