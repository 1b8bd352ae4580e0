//! The measuring half of `scripts/gpu_check`: decides whether training on a device (CUDA)
//! computes what training on the CPU computes, and whether images look like images.
//!
//!   gpu_check step DEVICE TOKENS[,TOKENS…]   one training step from identical weights, inputs
//!                                           and draws on the CPU and on DEVICE, for fp32 and
//!                                           bf16, fused and naive attention, and fused with
//!                                           activation checkpointing (fp32, bf16) and with two
//!                                           micro-batches: the loss, every gradient, the
//!                                           weights after Adam and the EMA
//!   gpu_check image-stat FILE.safetensors DATA  the high-frequency statistic of the images in
//!                                           FILE ("images", (N, C, I, I) in [−1, 1]) against
//!                                           its calibration on DATA and on pure noise
//!
//! Each check prints one line starting with PASS or FAIL (details after it); the exit code is
//! 1 when any check failed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use dit::checkpoint::state::TrainMeta;
use dit::config::{ActivationCheckpointing, Attention, Config, Precision, RuntimeConfig};
use dit::torch_flags::{self, SdpBackend};
use dit::train::{Draws, Trainer};
use tch::{Device, Kind, Tensor};

mod compare;
mod image_stat;

use compare::{Snapshot, Verdict};

/// Learning rate of the compared Adam step (the quick-start preset's peak).
const LR: f64 = 2e-3;

/// One way of computing a step.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Variant {
    tokens: i64,
    precision: Precision,
    attention: Attention,
    /// Recompute the blocks in the backward pass (`runtime.activation_checkpointing`).
    checkpointing: bool,
    /// Micro-batches the step's batch is split into (`train.grad_accum_steps`).
    micro_batches: i64,
}

impl Variant {
    fn name(&self) -> String {
        let p = match self.precision {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        };
        let a = if self.attention == Attention::Fused { "fused" } else { "naive" };
        let c = if self.checkpointing { " checkpointed" } else { "" };
        let k = if self.micro_batches > 1 {
            format!(" {} micro-batches", self.micro_batches)
        } else {
            String::new()
        };
        format!("{} tokens {p} {a}{c}{k}", self.tokens)
    }

    /// The quick-start model at the image size that gives `tokens` patches of 4×4, and a
    /// batch that keeps the naive (B, H, L, L) scores near 400 MB per block.
    fn config(&self) -> Result<(Config, i64)> {
        let side = (self.tokens as f64).sqrt() as i64;
        if side * side != self.tokens {
            bail!("{} tokens: not a square number of patches", self.tokens);
        }
        let mut cfg = Config::default();
        cfg.model.img_size = side * 4;
        let activation_checkpointing =
            if self.checkpointing { ActivationCheckpointing::Blocks } else { ActivationCheckpointing::None };
        cfg.runtime =
            RuntimeConfig { attention: self.attention, precision: self.precision, activation_checkpointing };
        cfg.train.ema_decay = 0.995;
        let batch = (16 * 64 * 64 / self.tokens.pow(2)).clamp(2, 16);
        // step_with splits the step's images into micro-batches of train.batch_size.
        cfg.train.batch_size = (batch / self.micro_batches).max(1);
        Ok((cfg, batch))
    }
}

/// The fixed inputs of one token count: initial weights (in a file), images, labels, draws.
struct Inputs {
    weights: PathBuf,
    images: Tensor,
    labels: Tensor,
    draws: Draws,
    _dir: tempfile::TempDir,
}

fn trainer(cfg: &Config, device: Device) -> Trainer {
    Trainer::new(TrainMeta::fresh(1, vec![], cfg.clone()), device, PathBuf::from("unused.ot"))
}

fn inputs(v: &Variant) -> Result<Inputs> {
    let (cfg, b) = v.config()?;
    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("init.safetensors");
    let cpu = trainer(&cfg, Device::Cpu);
    dit::checkpoint::write_tensors(&weights, &cpu.named_params())?;
    tch::manual_seed(3);
    let i = cfg.model.img_size;
    let images = Tensor::randint(256, [b, 3, i, i], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
    Ok(Inputs { weights, images, labels, draws: cpu.draws(b), _dir: dir })
}

/// One step and one Adam/EMA update of variant `v` on `device` from `inp`, read back.
fn run(v: &Variant, device: Device, inp: &Inputs) -> Result<Snapshot> {
    let (cfg, _) = v.config()?;
    let mut tr = trainer(&cfg, device);
    tr.load_weights(&inp.weights)?;
    let out = tr.step_with(&inp.images, &inp.labels, &inp.draws.to_device(device));
    let loss = out.loss.double_value(&[]);
    let grads = compare::to_cpu(&tr.named_grads());
    tr.apply(LR);
    Ok(Snapshot {
        loss,
        grads,
        weights: compare::to_cpu(&tr.named_params()),
        ema: compare::to_cpu(&tr.named_ema()),
    })
}

/// `GPU_CHECK_PERTURB=r` scales the first gradient by 1 + r before judging: the way a test
/// proves that the check catches an error of that size (unset: no change).
fn perturb(grads: &mut [(String, Tensor)]) {
    if let Some(r) = std::env::var("GPU_CHECK_PERTURB").ok().and_then(|v| v.parse::<f64>().ok()) {
        grads[0].1 = &grads[0].1 * (1.0 + r);
    }
}

/// The backend libtorch picks for this variant's attention on `device` (fused variants).
fn chosen_backend(v: &Variant, device: Device) -> String {
    if v.attention != Attention::Fused {
        return "naive".into();
    }
    let kind = if v.precision == Precision::Bf16 { Kind::BFloat16 } else { Kind::Float };
    let q = Tensor::zeros([2, 6, v.tokens, 64], (kind, device)).set_requires_grad(true);
    let scale = 1.0 / (v.tokens as f64).sqrt();
    let choice = Tensor::internal_fused_sdp_choice(&q, &q, &q, None::<Tensor>, 0.0, false, scale, false);
    SdpBackend::from_choice(choice).map_or(format!("unknown ({choice})"), |b| b.to_string())
}

/// Runs the step check of every variant of one token count; returns whether all passed.
fn check_tokens(tokens: i64, device: Device) -> Result<bool> {
    let variants: Vec<Variant> = [Precision::Fp32, Precision::Bf16]
        .into_iter()
        .flat_map(|precision| {
            [Attention::Naive, Attention::Fused].map(|attention| Variant {
                tokens,
                precision,
                attention,
                checkpointing: false,
                micro_batches: 1,
            })
        })
        // The memory options on the path CUDA users take: fused attention.
        .chain([
            Variant {
                tokens,
                precision: Precision::Fp32,
                attention: Attention::Fused,
                checkpointing: true,
                micro_batches: 1,
            },
            Variant {
                tokens,
                precision: Precision::Bf16,
                attention: Attention::Fused,
                checkpointing: true,
                micro_batches: 1,
            },
            Variant {
                tokens,
                precision: Precision::Fp32,
                attention: Attention::Fused,
                checkpointing: false,
                micro_batches: 2,
            },
        ])
        .collect();
    let inp = inputs(&variants[0])?;
    let cpu: Vec<Snapshot> = variants.iter().map(|v| run(v, Device::Cpu, &inp)).collect::<Result<_>>()?;
    let w0 = compare::to_cpu(&dit::checkpoint::read_tensors(&inp.weights)?);
    let mut all = true;
    for (i, v) in variants.iter().enumerate() {
        let mut dev = run(v, device, &inp)?;
        perturb(&mut dev.grads);
        // What two correct implementations on the CPU differ by, for this quantity.
        let reference = match v.precision {
            Precision::Fp32 => &cpu[1 - (i % 2)], // the other attention kernel, fp32
            Precision::Bf16 | Precision::Auto => &cpu[i - 2], // the same kernel in fp32
        };
        let verdict = Verdict::judge(v.precision, &dev, &cpu[i], reference, &w0, LR);
        all &= verdict.pass;
        println!(
            "{} step {} on {device:?} ({}): {}",
            verdict.word(),
            v.name(),
            chosen_backend(v, device),
            verdict.detail
        );
        if !verdict.pass && v.attention == Attention::Fused && device != Device::Cpu {
            diagnose(v, device, &inp, &cpu[i])?;
        }
    }
    Ok(all)
}

/// Reruns a failed fused step with one attention backend at a time, to name the faulty one.
fn diagnose(v: &Variant, device: Device, inp: &Inputs, cpu: &Snapshot) -> Result<()> {
    let saved = torch_flags::sdp_backends()?;
    for backend in SdpBackend::ALL {
        torch_flags::set_sdp_backends(&[backend])?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(v, device, inp)));
        match result {
            Ok(Ok(s)) => {
                let (worst, name) = compare::worst(&s.grads, &cpu.grads);
                println!("  diagnose {}: {backend} only: loss {:.6} (CPU {:.6}), worst gradient {worst:.2e} ({name})", v.name(), s.loss, cpu.loss);
            }
            _ => println!("  diagnose {}: {backend} only: not available for these inputs", v.name()),
        }
    }
    torch_flags::set_sdp_backends(&saved)
}

fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        other => bail!("device {other}: not available (cpu, or cuda with a visible GPU)"),
    }
}

fn main() -> std::process::ExitCode {
    let mut failed = false;
    let code = dit::cli::run(|| {
        let args: Vec<String> = std::env::args().collect();
        let usage = "usage: gpu_check step DEVICE TOKENS[,TOKENS…] | image-stat FILE.safetensors DATA";
        match args.get(1).map(String::as_str) {
            Some("step") if args.len() == 4 => {
                let device = parse_device(&args[2])?;
                torch_flags::set_tf32(false)?;
                for tokens in args[3].split(',') {
                    let tokens: i64 = tokens.parse().with_context(|| format!("token count {tokens}"))?;
                    failed |= !check_tokens(tokens, device)?;
                }
                Ok(())
            }
            Some("image-stat") if args.len() == 4 => {
                failed |= !image_stat::check(&PathBuf::from(&args[2]), &args[3])?;
                Ok(())
            }
            _ => bail!("{usage}"),
        }
    });
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        code
    }
}
