//! Helpers shared by the integration tests: the project's Python reference (in the venv that
//! scripts/setup made; a missing venv fails the test, it never skips it), the tiny config the
//! end-to-end tests train, a small image folder, and running the binaries.
#![allow(dead_code)] // each test binary uses its own subset

pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use dit::config::{Config, ModelConfig};
use serde_json::Value;
use tch::Tensor;

/// libtorch's random generator is global to the process, and the tests of one binary run on
/// parallel threads: a test whose draws must be reproducible (it seeds, or builds a model, or
/// trains in-process) holds this guard for as long as it draws. A test that failed while
/// holding it does not stop the others.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tiny setting every end-to-end test starts from: 16×16 images in 16 patches, one block
/// of width 16 with two heads, 100 noise steps, batches of 8 built-in pandas on one worker,
/// no previews. 15 168 parameters: a training step takes milliseconds on the CPU.
const TINY: &str = r#"{
  "model": {"img_size": 16, "patch_size": 4, "dit_num": 1, "head": 2, "emb_size": 16},
  "diffusion": {"max_t": 100},
  "train": {"batch_size": 8, "lr": 0.001, "num_workers": 1, "data_path": "builtin:pandas",
            "preview": {"every_epochs": 0}}
}"#;

/// The tiny config as JSON text, with each of `overrides` (JSON objects, applied in order)
/// merged in field by field: `{"train": {"epoch": 3}}` changes only `train.epoch`.
pub fn tiny_config(overrides: &[&str]) -> String {
    let mut config: Value = serde_json::from_str(TINY).unwrap();
    for text in overrides {
        let patch: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("override {text}: {e}"));
        merge(&mut config, patch);
    }
    let text = config.to_string();
    Config::from_json(&text).unwrap_or_else(|e| panic!("tiny config {text}: {e:#}"));
    text
}

/// The tiny config, parsed.
pub fn tiny(overrides: &[&str]) -> Config {
    Config::from_json(&tiny_config(overrides)).unwrap()
}

/// Writes `tiny_config(overrides)` to `dir/name`; returns the path.
pub fn write_tiny_config(dir: &Path, name: &str, overrides: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, tiny_config(overrides)).unwrap();
    path
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// A model section given as JSON object text, parsed with every other field at its default.
pub fn model_config(json: &str) -> ModelConfig {
    Config::from_json(&format!(r#"{{"model": {json}}}"#)).unwrap().model
}

/// A folder `dir/imgs` of the first 16 built-in pandas as 16×16 PNGs (at batch 8, epochs of
/// 2 steps); returns its path.
pub fn panda_folder(dir: &Path) -> PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..16 {
        let px = dit::data::render_panda(i, 16);
        image::RgbImage::from_raw(16, 16, px).unwrap().save(imgs.join(format!("{i:02}.png"))).unwrap();
    }
    imgs
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/python/golden.py` with the venv's Python; panics with its stderr on failure.
pub fn golden(args: &[&str]) -> String {
    python_script("golden.py", args)
}

/// Runs `tests/python/<script>` with the venv's Python (2 threads) and `args`; returns its
/// stdout, or panics with its stderr.
pub fn python_script(script: &str, args: &[&str]) -> String {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let out = Command::new(&python)
        .arg(root().join("tests/python").join(script))
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("cannot start the Python reference");
    assert!(out.status.success(), "{script} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Writes a config whose model section is `model` (JSON object text) into `dir`.
pub fn write_config(dir: &Path, model: &str) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, format!(r#"{{"model": {model}}}"#)).unwrap();
    path
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Reads a safetensors file into a name → tensor map.
pub fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// ‖a − b‖ / ‖b‖
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let denom = b.norm().double_value(&[]);
    (a - b).norm().double_value(&[]) / denom.max(1e-30)
}

/// Runs the binary `bin` in `dir` with `args` and returns its output, success or not.
pub fn run_bin(bin: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// The one line a failed (refused) run printed on stderr, after checking that it failed with
/// one line and no panic.
pub fn refusal(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal:\n{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    err
}

/// Runs the binary `bin` in `dir` with `args`; panics with its stdout and stderr unless it
/// succeeds.
pub fn run_ok(bin: &str, dir: &Path, args: &[&str]) -> Output {
    let out = run_bin(bin, dir, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python reference, built from `cfg`, loads `weights` strictly and runs the forward pass
/// and the L1 loss's backward on the safetensors file `inputs` (`x`, `y`, `t`, `target`);
/// returns what it wrote: `out`, `loss` and `grad.<name>` of every parameter.
pub fn golden_forward(dir: &Path, cfg: &Path, weights: &Path, inputs: &Path) -> HashMap<String, Tensor> {
    golden_forward_with(dir, cfg, weights, inputs, "naive")
}

/// [`golden_forward`] with the reference's attention: `naive` (the original's) or `sdpa`.
pub fn golden_forward_with(
    dir: &Path,
    cfg: &Path,
    weights: &Path,
    inputs: &Path,
    attention: &str,
) -> HashMap<String, Tensor> {
    let out = dir.join(format!("py-{attention}.safetensors"));
    golden(&[
        "forward",
        "--attention",
        attention,
        "--config",
        p(cfg),
        "--weights",
        p(weights),
        "--inputs",
        p(inputs),
        "--out",
        p(&out),
    ]);
    read(&out)
}

/// The Python reference, built from `cfg`, loads `weights` strictly and runs one forward pass
/// on `x` (1, C, I, I) with label `y` at step `t` (files go to `dir`); panics if it cannot.
pub fn python_forward(dir: &Path, cfg: &Path, weights: &Path, x: &Tensor, y: i64, t: i64) {
    let (y, t) = (Tensor::from_slice(&[y]), Tensor::from_slice(&[t]));
    let inputs = dir.join("in.safetensors");
    Tensor::write_safetensors(&[("x", x), ("y", &y), ("t", &t), ("target", x)], &inputs).unwrap();
    golden_forward(dir, cfg, weights, &inputs);
}

/// Polls `done` until it holds; panics if `child` exits first or a minute passes (`what` names
/// the awaited event in the message).
pub fn wait_until(child: &mut Child, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited ({status}) before {what}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no {what} after a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A seeded random taesd written as `dir/ae/taesd_{encoder,decoder}.pth`; returns the folder.
pub fn autoencoder(dir: &Path, seed: i64) -> PathBuf {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    let folder = dir.join("ae");
    let enc = tch::nn::VarStore::new(tch::Device::Cpu);
    let _e = dit::autoencoder::Encoder::new(&enc.root(), dit::autoencoder::Variant::Taesd);
    let dec = tch::nn::VarStore::new(tch::Device::Cpu);
    let _d = dit::autoencoder::Decoder::new(&dec.root(), dit::autoencoder::Variant::Taesd);
    std::fs::create_dir_all(&folder).unwrap();
    dit::checkpoint::save_weights(&enc, &folder.join("taesd_encoder.pth")).unwrap();
    dit::checkpoint::save_weights(&dec, &folder.join("taesd_decoder.pth")).unwrap();
    folder
}

/// `dir/imgs`: 8 built-in pandas as 64×64 PNGs.
pub fn latent_images(dir: &Path) {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..8 {
        let px = dit::data::render_panda(i, 64);
        image::RgbImage::from_raw(64, 64, px).unwrap().save(imgs.join(format!("{i}.png"))).unwrap();
    }
}
