//! The decoded-image cache's budget seen from a whole training run: it changes no result, and
//! it bounds the process's memory.

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

/// The peak of these small runs is reached as the run ends, about 80 MiB above the training
/// phase, after the loader (and its cache) is gone: this bounds the peak, but a cache that
/// overshot its budget by less than that margin would not show (an unbounded cache of these
/// 32 MiB does not). The cache's own bound is `ImageCache`'s: one allocation of exactly
/// capacity × image bytes.
#[test]
fn a_budget_bounds_peak_memory_over_two_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1230 images decoded at 96² take 1230 × (27 648 + 1) B = 32.4 MiB, 4.05× the budget.
    let imgs = noise_folder(d, 1230);
    const BUDGET: u64 = 8 << 20;
    let run = |name: &str, cache: &str| {
        let setting = format!(
            r#"{{"model": {{"img_size": 96, "patch_size": 16}},
                "train": {{"data_path": "{}", "batch_size": 16, "num_workers": 2, "epoch": 2, "cache_images": {cache}}}}}"#,
            p(&imgs)
        );
        let (stdout, peak) = train(d, name, &[&setting], &[]);
        assert!(stdout.contains("epoch 2/2:") && stdout.contains("finished 2 epochs"), "{name}: {stdout}");
        println!("peak RSS with cache {cache}: {:.1} MiB", peak as f64 / (1u64 << 20) as f64);
        (stdout, peak)
    };
    let (stdout, off) = run("off", "false");
    assert!(stdout.contains("image cache: 0 of 1230 images"), "{stdout}");
    let (stdout, budget) = run("budget", r#""8MiB""#);
    assert!(stdout.contains("image cache: 303 of 1230 images, 8.0 MiB (budget 8MiB)"), "{stdout}");
    // Two runs of the same setting differ in peak by up to about 4 MiB (libtorch, the
    // allocator): that much slack and a little more, no more.
    const NOISE: u64 = 6 << 20;
    assert!(
        budget <= off + BUDGET + NOISE,
        "budget run {budget} B > baseline {off} B + {BUDGET} B + {NOISE} B"
    );
}
