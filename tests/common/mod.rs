//! Helpers shared by the integration tests: the project's Python reference (in the venv that
//! scripts/setup made; a missing venv fails the test, it never skips it) and temp folders.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::Tensor;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/python/golden.py` with the venv's Python; panics with its stderr on failure.
pub fn golden(args: &[&str]) -> String {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let out = Command::new(&python)
        .arg(root().join("tests/python/golden.py"))
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("cannot start the Python reference");
    assert!(out.status.success(), "golden.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
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
pub fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
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

/// Runs the binary `bin` in `dir` with `args`; panics with its stdout and stderr unless it
/// succeeds.
pub fn run_ok(bin: &str, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin).current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python reference, built from `cfg`, loads `weights` strictly and runs one forward pass
/// on `x` (1, C, I, I) with label `y` at step `t` (files go to `dir`); panics if it cannot.
pub fn python_forward(dir: &Path, cfg: &Path, weights: &Path, x: &Tensor, y: i64, t: i64) {
    let (y, t) = (Tensor::from_slice(&[y]), Tensor::from_slice(&[t]));
    let inputs = dir.join("in.safetensors");
    Tensor::write_safetensors(&[("x", x), ("y", &y), ("t", &t), ("target", x)], &inputs).unwrap();
    let out = dir.join("o.safetensors");
    golden(&[
        "forward",
        "--config",
        p(cfg),
        "--weights",
        p(weights),
        "--inputs",
        p(&inputs),
        "--out",
        p(&out),
    ]);
}
