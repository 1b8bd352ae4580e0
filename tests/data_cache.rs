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
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "train {name} failed:\n{stdout}\n{stderr}");
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
    // 16×16×3 + 64 bytes an image: 4 KiB holds 4 of the 16.
    let runs = [("all", r#""all""#, "16 of 16 images"), ("part", r#""4KiB""#, "4 of 16 images"), ("off", "false", "0 of 16 images")];
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

#[test]
fn a_budget_bounds_peak_memory_over_two_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 2000 images decoded at 128² take 2000 × 48 KiB = 94 MiB, 3.9× the 24 MiB budget.
    let imgs = noise_folder(d, 2000);
    let setting = format!(
        r#"{{"model": {{"img_size": 128, "patch_size": 16}},
            "train": {{"data_path": "{}", "batch_size": 50, "num_workers": 2, "epoch": 2}}}}"#,
        p(&imgs)
    );
    const BUDGET: u64 = 24 << 20;
    let mut peaks = Vec::new();
    for (name, cache, held) in
        [("off", "false", "0 of 2000"), ("budget", r#""24MiB""#, "511 of 2000"), ("all", "true", "2000 of 2000")]
    {
        let (stdout, peak) = train(d, name, &[&setting, &format!(r#"{{"train": {{"cache_images": {cache}}}}}"#)], &[]);
        assert!(stdout.contains(&format!("image cache: {held} images")), "{name}: {stdout}");
        assert!(stdout.contains("epoch 2/2:") && stdout.contains("finished 2 epochs"), "{name} ran two epochs: {stdout}");
        println!("peak RSS with cache {name}: {:.1} MiB", peak as f64 / (1u64 << 20) as f64);
        peaks.push(peak);
    }
    let [off, budget, all] = peaks[..] else { unreachable!() };
    // The allocator and libtorch vary a run's peak by a few MiB: that much slack, no more.
    const NOISE: u64 = 8 << 20;
    assert!(budget <= off + BUDGET + NOISE, "budget run {budget} B > baseline {off} B + {BUDGET} B");
    // And the measurement can see a cache: the unbounded one goes well past the budget.
    assert!(all >= off + 2 * BUDGET + NOISE, "full cache {all} B against baseline {off} B");
}
