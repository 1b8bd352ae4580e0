//! The decoded-image cache's budget: it changes no result of a training run, and it bounds the
//! process's memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::Arc;

use common::{p, write_tiny_config};
use dit::data::{Dataset, Loader, CACHE_ALL, CACHE_OFF};
use image::{Rgb, RgbImage};

/// `n` distinct 32×32 PNGs in `dir/imgs`.
fn noise_folder(dir: &Path, n: usize) -> PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..n {
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let h = (x * 73 + y * 151 + i as u32 * 7919).wrapping_mul(2_654_435_761);
            Rgb([(h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8])
        });
        image.save(imgs.join(format!("{i:05}.png"))).unwrap();
    }
    imgs
}

/// Runs `train` in `dir` with the tiny config plus `overrides`; returns its stdout and its
/// peak resident set in bytes (the kernel's `ru_maxrss` of exactly that child, from `wait4`).
#[allow(clippy::zombie_processes)] // the child is reaped by wait4, which also reports its peak
fn train(dir: &Path, name: &str, overrides: &[&str], extra: &[&str]) -> (String, u64) {
    let cfg = write_tiny_config(dir, &format!("{name}.json"), overrides);
    let checkpoint = dir.join(name).join("w.safetensors");
    let logdir = dir.join(name).join("logs");
    let stdout_path = dir.join(format!("{name}.stdout"));
    let stderr_path = dir.join(format!("{name}.stderr"));
    let args = [&["--config", p(&cfg), "--device", "cpu", "--seed", "3"][..], extra].concat();
    let child = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(dir)
        .args(&args)
        .args(["--checkpoint", p(&checkpoint), "--logdir", p(&logdir)])
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4: {}", std::io::Error::last_os_error());
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "train {name} failed:\n{stdout}\n{stderr}"
    );
    (stdout, usage.ru_maxrss as u64 * 1024)
}

fn weights(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = dit::checkpoint::read_tensors(path).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn weights_are_bit_identical_with_the_cache_full_partial_or_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = noise_folder(d, 16);
    let data = format!(r#"{{"train": {{"data_path": "{}", "num_workers": 2, "epoch": 3}}}}"#, p(&imgs));
    // 16×16×3 + 1 bytes an image: 3 KiB holds 3 of the 16.
    let runs = [
        ("all", r#""all""#, "16 of 16 images"),
        ("part", r#""3KiB""#, "3 of 16 images"),
        ("off", "false", "0 of 16 images"),
    ];
    for (name, budget, held) in runs {
        let cache = format!(r#"{{"train": {{"cache_images": {budget}}}}}"#);
        let (stdout, _) = train(d, name, &[&data, &cache], &[]);
        assert!(stdout.contains(&format!("image cache: {held}")), "{name}: {stdout}");
    }
    let reference = weights(&d.join("all/w.safetensors"));
    for name in ["part", "off"] {
        let other = weights(&d.join(name).join("w.safetensors"));
        assert_eq!(reference.len(), other.len());
        for ((na, a), (nb, b)) in reference.iter().zip(&other) {
            assert_eq!(na, nb);
            assert!(a.equal(b), "{na} differs between the full cache and {name}");
        }
    }
}

/// The child side of [`a_budget_bounds_peak_memory_over_two_epochs`]: with `DIT_RSS_CHILD`
/// set to `FOLDER SIZE BYTES`, runs the loader over two epochs of FOLDER at SIZE with a cache
/// of BYTES and prints its peak resident set (VmHWM); without it, does nothing.
#[test]
fn rss_child() {
    let Ok(spec) = std::env::var("DIT_RSS_CHILD") else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let data = Arc::new(Dataset::open(parts[0], parts[1].parse().unwrap()).unwrap());
    let loader = Loader::new(data, 16, 2, parts[2].parse().unwrap()).unwrap();
    let mut images = 0;
    for epoch in 0..2 {
        for batch in loader.epoch(0, epoch, 0) {
            images += batch.unwrap().len();
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB");
    println!("rss: images {images} peak_kib {hwm} cache {}", loader.cache_summary());
}

/// Peak resident set (bytes) of a child running [`rss_child`] with a cache of `bytes`.
fn loader_peak(folder: &Path, size: i64, bytes: u64) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rss_child", "--nocapture", "--test-threads", "1"])
        .env("DIT_RSS_CHILD", format!("{} {size} {bytes}", p(folder)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .split("rss: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    println!("cache limit {bytes}: {line}");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[1], "2460", "two epochs of 1230 images: {line}");
    fields[3].parse::<u64>().unwrap() * 1024
}

/// A budget of a quarter of the decoded data set bounds the process's peak over two epochs:
/// measured in child processes (the loader alone: a training run's own peak varies by ±20 MiB
/// between runs, more than such a budget), against the same run with no cache.
#[test]
fn a_budget_bounds_peak_memory_over_two_epochs() {
    let dir = tempfile::tempdir().unwrap();
    // 1230 images decoded at 96² take 1230 × (27 648 + 1) B = 32.4 MiB, 4.05× the budget.
    let imgs = noise_folder(dir.path(), 1230);
    const BUDGET: u64 = 8 << 20;
    // Runs of the same setting differ in peak by up to about 2.5 MiB (measured): 4 MiB of slack.
    const NOISE: u64 = 4 << 20;
    let off = loader_peak(&imgs, 96, CACHE_OFF);
    let budget = loader_peak(&imgs, 96, BUDGET);
    assert!(
        budget <= off + BUDGET + NOISE,
        "budget run {budget} B > baseline {off} B + {BUDGET} B + {NOISE} B"
    );
    // The measurement sees a cache: without a limit the peak grows by the whole data set.
    let all = loader_peak(&imgs, 96, CACHE_ALL);
    assert!(all >= off + 3 * BUDGET, "full cache {all} B against baseline {off} B");
}
