//! The decoded-image cache's budget: it changes no result of a training run, and it bounds the
//! process's memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{p, write_tiny_config};
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

/// The `train` binary's peak resident set (bytes) over two epochs of `imgs` decoded at 128²
/// with a cache of `budget` (config syntax), and its start line about the cache.
fn train_peak(dir: &Path, imgs: &Path, name: &str, budget: &str) -> (u64, String) {
    // One small block at 64 tokens and batches of 4: the run's own memory is mostly libtorch,
    // so the decoded data set is what the cache can add.
    let setting = format!(
        r#"{{"model": {{"img_size": 128, "patch_size": 16}},
            "train": {{"data_path": "{}", "batch_size": 4, "num_workers": 2, "epoch": 2,
                      "cache_images": {budget}}}}}"#,
        p(imgs)
    );
    let (stdout, peak) = train(dir, name, &[&setting], &[]);
    let line = stdout.lines().find(|l| l.starts_with("image cache:")).unwrap_or_default().to_string();
    println!("{name}: peak {:.1} MiB; {line}", peak as f64 / 1048576.0);
    (peak, line)
}

/// A budget of a quarter of the decoded data set bounds the training run's peak memory over
/// two epochs: the `train` binary with that budget against the same run with no cache, both
/// measured here (the kernel's `ru_maxrss` of each child).
#[test]
fn a_budget_bounds_peak_memory_over_two_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4096 images decoded at 128² take 4096 × (49 152 + 1) B = 192 MiB, 4× the budget.
    let imgs = noise_folder(d, 4096);
    const BUDGET: u64 = 48 << 20;
    // Slack for the run-to-run spread of a training run's peak.
    const NOISE: u64 = 16 << 20;
    let (off, _) = train_peak(d, &imgs, "off", "false");
    let (budget, held) = train_peak(d, &imgs, "budget", r#""48MiB""#);
    assert!(held.contains("of 4096 images") && !held.contains("4096 of 4096"), "{held}");
    assert!(
        budget <= off + BUDGET + NOISE,
        "budget run {budget} B > baseline {off} B + {BUDGET} B + {NOISE} B"
    );
    // The measurement sees a cache: without a limit the peak grows by more than the budget.
    // Not by the whole 192 MiB: the allocator keeps large freed buffers (`dit::cli` sets it so),
    // and the cache fills memory that the run without one had held transiently (measured:
    // baseline 556 MiB, 48 MiB budget 546 MiB, full cache 628 MiB; at batch 64, 843 / 845 / 920).
    let (all, held) = train_peak(d, &imgs, "all", r#""all""#);
    assert!(held.contains("4096 of 4096 images"), "{held}");
    assert!(all >= off + BUDGET, "full cache {all} B against baseline {off} B");
}
