//! One measurement of the Rust side of `scripts/bench`, printed as a JSON line. Each
//! measurement runs in its own process so that its peak resident memory is its own.
//!
//!   bench train    CONFIG BATCH STEPS   seconds per training step (after one warm-up step;
//!                                       STEPS 0: of the first step), resident memory before
//!                                       the first forward pass
//!   bench forward  CONFIG BATCH STEPS   seconds per forward pass without gradients
//!   bench sample   CONFIG SAMPLER STEPS seconds for a whole DDIM/DDPM sample of one image
//!   bench loader   CONFIG DATA STEPS    share of the step time spent waiting for data, in the
//!                                       first epoch and after it (cached)
//!   bench caps                          whether the device computes bf16 natively
//!
//! `BENCH_DEVICE=cuda` measures on the GPU (`scripts/gpu_bench`), `BENCH_PRECISION=bf16` in
//! mixed precision; the default is the CPU in fp32. `BENCH_THREADS=N` sets libtorch's intra-op
//! threads (default: libtorch's own choice, one per core).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dit::checkpoint::state::TrainMeta;
use dit::data::{Dataset, Loader, CACHE_ALL};
use dit::diffusion::Schedule;
use dit::sampling::{self, SampleOptions, SamplerKind};
use dit::train::Trainer;
use dit::Config;
use tch::{Device, Kind, Tensor};

/// A memory field of this process's /proc/self/status, in bytes: `VmHWM` (peak resident set)
/// or `VmRSS` (resident now).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system, all threads) this process has used so far: a step's cost that
/// other jobs on the machine do not inflate, unlike its wall time (with OMP_WAIT_POLICY=passive
/// so that waiting threads do not spin).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss() -> u64 {
    status_bytes("VmHWM")
}

/// `BENCH_DEVICE`: `cpu` (default) or `cuda`.
fn device() -> Result<Device> {
    match std::env::var("BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Ok(Device::Cpu),
        Ok("cuda") if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        Ok(other) => anyhow::bail!("BENCH_DEVICE={other}: not available (cpu, or cuda with a visible GPU)"),
    }
}

/// The trainer the `train` command would build for `config` (seed 0, nothing on disk); with
/// `batch`, that is its `train.batch_size`, so that a step of `batch` images is one forward
/// pass (the trainer splits a step into micro-batches of `train.batch_size`).
fn setup(config: &str, batch: Option<i64>) -> Result<Trainer> {
    let mut cfg = Config::load(config)?;
    if let Some(b) = batch {
        cfg.train.batch_size = b;
    }
    if let Ok(p) = std::env::var("BENCH_PRECISION") {
        cfg.runtime.precision = <dit::config::Precision as clap::ValueEnum>::from_str(&p, true)
            .map_err(|e| anyhow::anyhow!("BENCH_PRECISION={p}: {e}"))?;
    }
    Ok(Trainer::new(TrainMeta::fresh(0, vec![], cfg), device()?, PathBuf::from("unused.ot")))
}

/// One step of the trainer, exactly as `train` runs it: draws, forward, backward, clipping,
/// Adam and the EMA; the loss is read back as the trainer does for its log.
fn train_step(tr: &mut Trainer, images: &Tensor, labels: &Tensor) -> f64 {
    let lr = dit::optim::learning_rate(&tr.config().train, tr.meta.step, i64::MAX);
    let out = tr.step(images, labels);
    tr.apply(lr);
    tr.meta.step += 1;
    out.loss.double_value(&[])
}

fn main() -> std::process::ExitCode {
    dit::cli::run(run_bench)
}

fn run_bench() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(n.parse().with_context(|| format!("BENCH_THREADS={n}"))?);
    }
    let what = args.get(1).context("usage: bench train|forward|sample|loader CONFIG ARG STEPS")?.clone();
    if what == "caps" {
        // What `precision: auto` decides here, for the scripts to skip emulated bf16.
        println!("{{\"native_bf16\": {}}}", dit::model::compute::native_bf16(device()?));
        return Ok(());
    }
    let batch = match what.as_str() {
        "train" => Some(
            args.get(3).context("usage: bench train CONFIG BATCH STEPS")?.parse::<i64>().context("BATCH")?,
        ),
        _ => None,
    };
    let mut tr = setup(&args[2], batch)?;
    let steps: usize = args[4].parse()?;
    let dev = tr.device();
    let schedule = Schedule::new(&tr.config().diffusion, dev);
    let cfg = tr.config().clone();
    let m = &cfg.model;
    let result = match what.as_str() {
        "train" => {
            let b: i64 = args[3].parse()?;
            let images =
                Tensor::randint(256, [b, m.channel, m.img_size, m.img_size], (Kind::Uint8, Device::Cpu));
            let labels = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
            // What the run holds before its first forward pass: libtorch, the weights, Adam,
            // the EMA and the batch; the peak above it is the step's activations.
            let before = status_bytes("VmRSS");
            // STEPS 0 times the first step itself (for settings where a step takes minutes).
            let (first, first_cpu) = (Instant::now(), cpu_seconds());
            train_step(&mut tr, &images, &labels);
            let (first, first_cpu) = (first.elapsed().as_secs_f64(), cpu_seconds() - first_cpu);
            // BENCH_PROFILE=FILE: libtorch's operator profile of the timed steps, as a Chrome trace.
            let profile = std::env::var_os("BENCH_PROFILE").map(std::path::PathBuf::from);
            let profiler = profile.as_ref().map(|_| dit::profile::Profiler::start()).transpose()?;
            let (start, start_cpu) = (Instant::now(), cpu_seconds());
            for _ in 0..steps {
                train_step(&mut tr, &images, &labels);
            }
            if let (Some(p), Some(path)) = (profiler, &profile) {
                p.save(path)?;
            }
            let (per, cpu) = match steps {
                0 => (first, first_cpu),
                n => (start.elapsed().as_secs_f64() / n as f64, (cpu_seconds() - start_cpu) / n as f64),
            };
            serde_json::json!({"seconds_per_step": per, "cpu_seconds_per_step": cpu, "images_per_sec": b as f64 / per,
                               "rss_before_first_forward_bytes": before})
        }
        "forward" => {
            let b: i64 = args[3].parse()?;
            let x = Tensor::randn([b, m.channel, m.img_size, m.img_size], (Kind::Float, dev));
            let (y, t) = (Tensor::zeros([b], (Kind::Int64, dev)), Tensor::full([b], 500, (Kind::Int64, dev)));
            tch::no_grad(|| {
                let _ = tr.model().forward(&x, &y, &t);
                let start = Instant::now();
                for _ in 0..steps {
                    let _ = tr.model().forward(&x, &y, &t).sum(Kind::Float).double_value(&[]);
                }
                serde_json::json!({"seconds": start.elapsed().as_secs_f64() / steps as f64})
            })
        }
        "sample" => {
            let sampler = if args[3] == "ddpm" { SamplerKind::Ddpm } else { SamplerKind::Ddim };
            let opts = SampleOptions {
                sampler,
                steps: steps as i64,
                eta: 0.0,
                keep: vec![],
                guidance: None,
                shift: None,
                cfg_interval_start: None,
            };
            let noise = Tensor::randn([1, m.channel, m.img_size, m.img_size], (Kind::Float, dev));
            let labels = Tensor::zeros([1], (Kind::Int64, dev));
            let start = Instant::now();
            let (images, _) = sampling::sample(tr.model(), &schedule, &opts, noise, &labels, &mut |_, _| {})?;
            let _ = images.sum(Kind::Float).double_value(&[]); // waits for the device
            serde_json::json!({"seconds": start.elapsed().as_secs_f64()})
        }
        "loader" => {
            let dataset = Arc::new(Dataset::open(&args[3], m.img_size)?);
            let loader = Loader::new(
                dataset,
                cfg.train.batch_size as usize,
                cfg.train.num_workers as usize,
                CACHE_ALL,
            )?;
            let mut measure = |epoch: u64, train: bool| -> Result<(f64, usize)> {
                let (mut wait, mut n) = (Duration::ZERO, 0);
                let start = Instant::now();
                for batch in loader.epoch(0, epoch, 0) {
                    let batch = batch?;
                    wait += batch.wait;
                    n += 1;
                    if train {
                        train_step(&mut tr, &batch.images, &batch.labels);
                        if n == steps {
                            break;
                        }
                    }
                }
                Ok((wait.as_secs_f64() / start.elapsed().as_secs_f64(), n))
            };
            let (first, _) = measure(0, true)?;
            measure(1, false)?; // decode the rest of the first pass into the cache
            let (later, _) = measure(2, true)?;
            serde_json::json!({"wait_share_first_epoch": first, "wait_share_later": later, "steps": steps})
        }
        other => anyhow::bail!("unknown measurement {other}"),
    };
    let mut result = result;
    result["peak_rss_bytes"] = peak_rss().into();
    println!("{result}");
    Ok(())
}
