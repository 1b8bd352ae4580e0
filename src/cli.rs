//! What the binaries share: one-line errors with a non-zero exit code instead of anyhow's
//! and clap's multi-line reports, the `--device` choice, and the flags that override config fields.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::config::{
    ActivationCheckpointing, Attention, Config, Loss, LossWeighting, Precision, Prediction, SamplerKind,
};

/// Largest allocation glibc serves from the heap instead of a fresh mmap (its maximum).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory glibc keeps at the top of the heap instead of returning it to the kernel.
const TRIM_THRESHOLD: i32 = 512 << 20;

/// libtorch frees and reallocates the same large activation buffers every step; with glibc's
/// defaults each one is a fresh mmap whose pages fault in again (measured: 16% of a 32×32
/// training step). Keeping them in the heap removes that cost.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// The command line parsed into `T`; a mistake in it (an unknown flag, a value outside a
/// flag's choices) ends the process with clap's message on one line and exit code 2, as clap's
/// own exit does; `--help` and `--version` print as clap prints them.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|err| {
        use clap::error::ErrorKind;
        if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            err.exit();
        }
        let text = err.render().to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
            .collect();
        eprintln!("{}", lines.join(" "));
        std::process::exit(2);
    })
}

/// Runs a command's body; an error prints as one line, `error: outer context: … : cause`.
/// libtorch reports its failures (a device out of memory, a kernel that refuses its inputs)
/// as panics inside tch; they end the same way, with their first line, not a backtrace.
pub fn run(body: impl FnOnce() -> Result<()>) -> ExitCode {
    tune_allocator();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(anyhow::anyhow!(panic_message(payload.as_ref()))));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// The first line of a panic's message (libtorch appends a C++ backtrace after it).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown failure");
    let first = text.lines().next().unwrap_or_default();
    // tch wraps libtorch's message as `…: Torch("<message>`.
    match first.split_once("Torch(\"") {
        Some((_, message)) => format!("libtorch: {}", message.trim_end_matches(['"', ')'])),
        None => format!("internal error (a bug in dit): {first}"),
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Cuda => {
                bail!("--device cuda: no CUDA device is available (tch::Cuda::is_available() is false)")
            }
        }
    }
}

/// The `train` flags that override fields of the config, each named after its field.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrainOverrides {
    /// Image folder, or builtin:pandas / builtin:pandas2 (train.data_path)
    #[arg(long)]
    pub data: Option<String>,
    /// Number of epochs (train.epoch)
    #[arg(long)]
    pub epochs: Option<i64>,
    /// Images per forward pass (train.batch_size)
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// Micro-batches of --batch-size per optimizer step, their gradients added up (train.grad_accum_steps)
    #[arg(long)]
    pub grad_accum_steps: Option<i64>,
    /// Learning rate (train.lr)
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps over which the learning-rate schedule runs its course, fixed for the run
    /// [default: train.epoch × steps per epoch at the run's first start] (train.schedule_steps)
    #[arg(long)]
    pub schedule_steps: Option<i64>,
    /// Seed of every random draw; the same seed gives the same weights on the CPU (train.seed)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Weights file; the extension picks .ot, .safetensors or .pth (train.model_save_path)
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Save every N epochs [default: every epoch, unless --save-every-minutes is given]; stops
    /// and the last epoch always save (train.save_every)
    #[arg(long, value_name = "N")]
    pub save_every: Option<i64>,
    /// Save at the end of the first epoch that ends M minutes or more after the last save
    /// (train.save_every_minutes)
    #[arg(long, value_name = "M")]
    pub save_every_minutes: Option<f64>,
    /// TensorBoard log folder (train.logdir)
    #[arg(long)]
    pub logdir: Option<String>,
    /// Decoding threads (train.num_workers)
    #[arg(long)]
    pub num_workers: Option<i64>,
    /// Preview every N epochs, 0 = off (train.preview.every_epochs)
    #[arg(long)]
    pub preview_every: Option<i64>,
    /// Preview sampler (train.preview.sampler)
    #[arg(long, value_enum)]
    pub preview_sampler: Option<SamplerKind>,
    /// Preview denoising steps (train.preview.steps)
    #[arg(long)]
    pub preview_steps: Option<i64>,
    /// What the model learns to predict: epsilon (the original's), x0 or v (diffusion.prediction)
    #[arg(long, value_enum)]
    pub prediction: Option<Prediction>,
    /// Distance between prediction and target: l1 (the original's) or l2 (train.loss)
    #[arg(long, value_enum)]
    pub loss: Option<Loss>,
    /// Weighting of each image's loss by its step: none (the original's) or min_snr (train.loss_weighting)
    #[arg(long, value_enum)]
    pub loss_weighting: Option<LossWeighting>,
    /// γ of the min_snr weighting (train.min_snr_gamma)
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Arithmetic: fp32, or bf16 mixed precision with float32 weights (runtime.precision)
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Attention kernel (runtime.attention)
    #[arg(long, value_enum)]
    pub attention: Option<Attention>,
    /// Recompute each block in the backward pass instead of keeping its activations (runtime.activation_checkpointing)
    #[arg(long, value_enum)]
    pub activation_checkpointing: Option<ActivationCheckpointing>,
    /// Train in the latent space of this autoencoder (taesd, taesdxl, taesd3, taef1, taef2), or
    /// none for pixel space (model.autoencoder)
    #[arg(long, value_name = "NAME")]
    pub autoencoder: Option<String>,
    /// Mirror each training image at random, per (seed, epoch, image) (train.hflip)
    #[arg(long)]
    pub hflip: bool,
}

impl TrainOverrides {
    /// Writes every given flag into `cfg`, then validates the result.
    pub fn apply(&self, cfg: &mut Config) -> Result<()> {
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        let t = &mut cfg.train;
        set(&mut t.data_path, &self.data);
        set(&mut t.epoch, &self.epochs);
        set(&mut t.batch_size, &self.batch_size);
        set(&mut t.grad_accum_steps, &self.grad_accum_steps);
        set(&mut t.lr, &self.lr);
        set(&mut t.schedule_steps, &self.schedule_steps.map(Some));
        set(&mut t.seed, &self.seed.map(Some));
        set(&mut t.model_save_path, &self.checkpoint);
        set(&mut t.save_every, &self.save_every.map(Some));
        set(&mut t.save_every_minutes, &self.save_every_minutes.map(Some));
        set(&mut t.logdir, &self.logdir);
        set(&mut t.num_workers, &self.num_workers);
        set(&mut t.preview.every_epochs, &self.preview_every);
        set(&mut t.preview.sampler, &self.preview_sampler);
        set(&mut t.preview.steps, &self.preview_steps);
        set(&mut t.loss, &self.loss);
        set(&mut t.loss_weighting, &self.loss_weighting);
        set(&mut t.min_snr_gamma, &self.min_snr_gamma);
        set(&mut cfg.diffusion.prediction, &self.prediction);
        set(&mut cfg.runtime.precision, &self.precision);
        set(&mut cfg.runtime.attention, &self.attention);
        set(&mut cfg.runtime.activation_checkpointing, &self.activation_checkpointing);
        if let Some(name) = &self.autoencoder {
            cfg.model.autoencoder = match name.as_str() {
                "none" => None,
                name => Some(name.parse().map_err(|e| anyhow::anyhow!("--autoencoder: {e}, or none"))?),
            };
        }
        cfg.train.hflip |= self.hflip;
        cfg.validate().context("after applying the command-line flags")
    }
}
