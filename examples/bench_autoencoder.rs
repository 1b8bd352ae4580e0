//! One measurement of the Rust side of the autoencoder rows of `scripts/bench_latent`, printed
//! as a JSON line (one process per measurement, like examples/bench.rs):
//!
//!   bench_autoencoder encode TAESD_DIR INPUTS STEPS   images/s of the taef2 encoder
//!   bench_autoencoder decode TAESD_DIR INPUTS STEPS   images/s of the taef2 decoder
//!
//! INPUTS is the batch that tests/python/bench_latent.py `prepare` wrote (`image`, and PyTorch's
//! `encoded` and `decoded` of it); the encoder runs on `image`, the decoder on `encoded`, one
//! warm-up batch and then STEPS timed ones, without gradient, and the result carries the largest
//! difference from PyTorch's output. `BENCH_THREADS` (default 2) sets libtorch's intra-op
//! threads; `BENCH_AE_LAYOUT` picks how the network runs: `plain` (default, as loaded) or
//! `channels_last` (`Encoder::channels_last` / `Decoder::channels_last`).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dit::autoencoder::{Decoder, Encoder, Variant};
use tch::{Device, Tensor};

/// The network measured, as loaded and laid out.
type Net = Box<dyn Fn(&Tensor) -> Tensor>;

fn main() -> std::process::ExitCode {
    dit::cli::run(run)
}

/// CPU seconds (user + system, all threads) this process has used so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_autoencoder encode|decode TAESD_DIR INPUTS STEPS";
    let [_, what, dir, inputs, steps] = &args[..] else { bail!("{usage}") };
    let steps: usize = steps.parse().context("STEPS")?;
    let threads: i32 =
        std::env::var("BENCH_THREADS").map_or(Ok(2), |t| t.parse()).context("BENCH_THREADS")?;
    tch::set_num_threads(threads);
    let layout = std::env::var("BENCH_AE_LAYOUT").unwrap_or_else(|_| "plain".into());
    let channels_last = match layout.as_str() {
        "plain" => false,
        "channels_last" => true,
        other => bail!("BENCH_AE_LAYOUT={other}: expected plain or channels_last"),
    };
    let batch: std::collections::HashMap<String, Tensor> =
        dit::checkpoint::read_tensors(Path::new(inputs))?.into_iter().collect();
    let dir = Path::new(dir);
    let (net, input, want): (Net, _, _) = match what.as_str() {
        "encode" => {
            let mut enc = Encoder::load(&dir.join("taef2_encoder.pth"), Variant::Taef2, Device::Cpu)?;
            if channels_last {
                enc = enc.channels_last();
            }
            (Box::new(move |x| enc.encode(x)), &batch["image"], &batch["encoded"])
        }
        "decode" => {
            let mut dec = Decoder::load(&dir.join("taef2_decoder.pth"), Variant::Taef2, Device::Cpu)?;
            if channels_last {
                dec = dec.channels_last();
            }
            (Box::new(move |x| dec.decode(x)), &batch["encoded"], &batch["decoded"])
        }
        _ => bail!("{usage}"),
    };
    let first = net(input); // warm-up
    let max_abs_diff = (&first - want).abs().max().double_value(&[]);
    let (start, start_cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        let _ = net(input); // the CPU computes synchronously
    }
    let per = start.elapsed().as_secs_f64() / steps as f64;
    let cpu = (cpu_seconds() - start_cpu) / steps as f64;
    let n = input.size()[0] as f64;
    let result = serde_json::json!({
        "images_per_sec": n / per,
        "seconds_per_batch": per,
        "cpu_seconds_per_batch": cpu,
        "threads": tch::get_num_threads(),
        "layout": layout,
        "max_abs_diff_from_pytorch": max_abs_diff,
    });
    println!("{result}");
    Ok(())
}
