//! The sample-quality metric (`dit::quality`, sliced Wasserstein distance of Karras et al.
//! 2018): calibration on the built-in data at 32×32 (the order of data, blurred data, a shifted
//! colour balance and noise, with the margins measured), determinism, and the `eval` binary's
//! JSON line and one-line errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{p, rng_lock};
use dit::data::Dataset;
use dit::quality::{self, SwdOptions, SwdReport};
use tch::{Device, Kind, Tensor};

/// Images `first..first + n` of `builtin:pandas` at 32×32, (n, 3, 32, 32) in [−1, 1].
fn pandas(first: usize, n: usize) -> Tensor {
    let data = Dataset::open("builtin:pandas", 32).unwrap();
    let bytes: Vec<u8> = (first..first + n).flat_map(|i| data.load(i).unwrap()).collect();
    let x = Tensor::from_slice(&bytes).view([n as i64, 32, 32, 3]).permute([0, 3, 1, 2]);
    x.to_kind(Kind::Float) / 127.5 - 1.0
}

fn swd(a: &Tensor, b: &Tensor) -> SwdReport {
    quality::swd(a, b, &SwdOptions::default(), 0).unwrap()
}

/// A 3×3 box blur (zero padding not counted).
fn blurred(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

/// A warmer colour balance: red up, blue down by 0.3 (of the range 2), clipped to [−1, 1].
fn warmer(x: &Tensor) -> Tensor {
    let shift = Tensor::from_slice(&[0.3f32, 0.0, -0.3]).view([1, 3, 1, 1]);
    (x + shift).clamp(-1.0, 1.0)
}

#[test]
fn data_scores_far_below_blurred_data_below_noise_and_colour_shifts_score_worse() {
    let n = 512;
    let (a, b) = (pandas(0, n), pandas(n, n));
    tch::manual_seed(0);
    let noise = Tensor::rand([n as i64, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let same = swd(&a, &b);
    let blur = swd(&a, &blurred(&b));
    let colour = swd(&a, &warmer(&b));
    let noisy = swd(&a, &noise);
    // Measured (× 10⁻³, mean of levels 32 and 16): same data 7.69 (7.56, 7.81), blurred 61.16
    // (90.56, 31.76), warmer 14.22 (10.62, 17.82), noise 186.03 (197.43, 174.63). The margins
    // asserted are about half the measured ratios (8.0×, 3.0×, 1.85×).
    assert!(blur.mean > 4.0 * same.mean, "{same:?} {blur:?}");
    assert!(noisy.mean > 2.0 * blur.mean, "{blur:?} {noisy:?}");
    assert!(colour.mean > 1.4 * same.mean, "{same:?} {colour:?}");
    // The blur is mostly a band-pass (32×32 level) effect, the colour shift a low-pass one.
    assert!(blur.per_level[0].1 > 2.0 * blur.per_level[1].1, "{blur:?}");
    assert!(colour.per_level[1].1 > colour.per_level[0].1, "{colour:?}");
    assert_eq!(same.per_level.iter().map(|l| l.0).collect::<Vec<_>>(), [32, 16]);
}

#[test]
fn the_distance_is_deterministic_given_the_seed_and_symmetric_in_size() {
    let _rng = rng_lock();
    let (a, b) = (pandas(0, 64), pandas(64, 96));
    let first = quality::swd(&a, &b, &SwdOptions::default(), 5).unwrap();
    assert_eq!(first, quality::swd(&a, &b, &SwdOptions::default(), 5).unwrap());
    assert_ne!(first, quality::swd(&a, &b, &SwdOptions::default(), 6).unwrap());
    // Measuring must leave libtorch's global generator alone.
    tch::manual_seed(3);
    let before = Tensor::randn([4], (Kind::Float, Device::Cpu));
    tch::manual_seed(3);
    quality::swd(&a, &b, &SwdOptions::default(), 5).unwrap();
    assert_eq!(before, Tensor::randn([4], (Kind::Float, Device::Cpu)));
}

#[test]
fn bad_image_sets_are_errors() {
    let a = pandas(0, 16);
    let err = |r: anyhow::Result<SwdReport>| format!("{:#}", r.unwrap_err());
    let o = SwdOptions::default();
    assert!(err(quality::swd(&a, &a.narrow(0, 0, 15), &o, 0)).contains("at least 16"));
    assert!(err(quality::swd(&a, &a.narrow(2, 0, 16), &o, 0)).contains("different shapes"));
    assert!(err(quality::swd(&a.get(0), &a, &o, 0)).contains("(N, C, H, W)"));
}

// ---------------------------------------------------------------------------------------------
// The eval binary.

/// Writes built-in panda images `first..first + n` at `side`×`side` as PNG files into `dir`.
fn write_pngs(dir: &Path, first: usize, n: usize, side: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in first..first + n {
        let pixels = dit::data::render_panda(i, side as i64);
        let img = image::RgbImage::from_raw(side, side, pixels).unwrap();
        img.save(dir.join(format!("{i:04}.png"))).unwrap();
    }
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval")).args(args).output().unwrap()
}

#[test]
fn eval_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples");
    write_pngs(&samples, 1000, 32, 32);
    let out = eval(&["--samples", p(&samples), "--data", "builtin:pandas2", "--class", "panda", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["images"], 32);
    assert_eq!(v["size"], 32);
    assert_eq!(v["unit"], "1e-3");
    let levels: Vec<i64> =
        v["levels"].as_array().unwrap().iter().map(|l| l["resolution"].as_i64().unwrap()).collect();
    assert_eq!(levels, [32, 16]);
    let mean = v["swd"].as_f64().unwrap();
    assert!(mean.is_finite() && mean > 0.0, "{v}");
    // The same images against red pandas are much further away.
    let other =
        eval(&["--samples", p(&samples), "--data", "builtin:pandas2", "--class", "red_panda", "--json"]);
    let w: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert!(w["swd"].as_f64().unwrap() > 2.0 * mean, "{v} {w}");
    // The table names each level.
    let table = eval(&["--samples", p(&samples), "--data", "builtin:pandas"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("32×32") && text.contains("16×16") && text.contains("mean of 2 levels"), "{text}");
}

#[test]
fn eval_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, few, mixed, empty) = (d.join("good"), d.join("few"), d.join("mixed"), d.join("empty"));
    write_pngs(&good, 0, 20, 32);
    write_pngs(&few, 0, 3, 32);
    write_pngs(&mixed, 0, 20, 32);
    write_pngs(&mixed, 20, 1, 16);
    std::fs::create_dir_all(&empty).unwrap();
    let (nowhere, nodata) = (d.join("nowhere"), d.join("nodata"));
    let g = p(&good);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--samples", p(&nowhere), "--data", "builtin:pandas"], "nowhere does not exist"),
        (vec!["--samples", p(&empty), "--data", "builtin:pandas"], "no image files"),
        (vec!["--samples", p(&few), "--data", "builtin:pandas"], "3 images; at least 16"),
        (vec!["--samples", p(&mixed), "--data", "builtin:pandas"], "0020.png is 16×16 but"),
        (vec!["--samples", g, "--data", p(&nodata)], "nodata does not exist"),
        (vec!["--samples", g, "--data", p(&few)], "--data"),
        (vec!["--samples", g, "--data", "builtin:pandas", "--num", "4"], "--num 4: at least 16"),
        (vec!["--samples", g, "--data", "builtin:pandas2", "--class", "cat"], "class \"cat\""),
        (vec!["--samples", "builtin:pandas", "--data", "builtin:pandas"], "give --size"),
    ];
    for (args, needle) in cases {
        let out = eval(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
}
