//! One measurement of the Rust side of `scripts/bench_data`, printed as a JSON line (each in its
//! own process, as the PyTorch side's).
//!
//!   bench_data loader FOLDER SIZE WORKERS EPOCHS   images/s of the loader (cache off, batches
//!                                                  of 32) over EPOCHS epochs, timed from the
//!                                                  first batch on, and CPU seconds per
//!                                                  decoded image (from the loader's creation)
//!   bench_data list FOLDER CLASSES                 seconds to scan and sort FOLDER (`folders`
//!                                                  or `none`)

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dit::config::ClassLayout;
use dit::data::{Dataset, Loader, CACHE_OFF};
use serde_json::json;

/// Batch size of both sides of the benchmark.
const BATCH: usize = 32;

/// CPU seconds (user + system) this process has used so far, all threads together.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn loader(folder: &str, size: i64, workers: usize, epochs: u64) -> Result<serde_json::Value> {
    let data = Arc::new(Dataset::open(folder, size)?);
    let loader = Loader::new(data.clone(), BATCH, workers, CACHE_OFF)?;
    let (mut images, mut first) = (0usize, None);
    let cpu_start = cpu_seconds();
    for epoch in 0..epochs {
        for batch in loader.epoch(0, epoch, 0) {
            let batch = batch?;
            match first {
                None => first = Some(Instant::now()),
                Some(_) => images += batch.len(),
            }
        }
    }
    let started = first.context("the data set gave no batch")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "images": images,
        "seconds": seconds,
        "images_per_sec": images as f64 / seconds,
        "cpu_seconds_per_image": (cpu_seconds() - cpu_start) / (epochs as f64 * data.len() as f64),
        "workers": workers,
        "len": data.len(),
    }))
}

fn list(folder: &str, classes: &str) -> Result<serde_json::Value> {
    let layout = match classes {
        "folders" => ClassLayout::Folders,
        "none" => ClassLayout::None,
        other => bail!("classes {other:?}: expected folders or none"),
    };
    let started = Instant::now();
    let data = Dataset::open_as(folder, 256, layout)?;
    Ok(
        json!({"files": data.len(), "classes": data.class_names().len(), "seconds": started.elapsed().as_secs_f64()}),
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).with_context(|| format!("argument {i} is missing"));
    let number = |i: usize| -> Result<u64> { arg(i)?.parse().with_context(|| format!("argument {i}")) };
    let result = match args.first().map(String::as_str) {
        Some("loader") => loader(arg(1)?, number(2)? as i64, number(3)? as usize, number(4)?)?,
        Some("list") => list(arg(1)?, arg(2)?)?,
        _ => bail!("usage: bench_data loader FOLDER SIZE WORKERS EPOCHS | list FOLDER CLASSES"),
    };
    println!("{result}");
    Ok(())
}
