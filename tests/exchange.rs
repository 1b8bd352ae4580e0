//! Weight exchange with PyTorch in both directions, through every format, and the `convert`
//! binary's checks.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use dit::config::{Attention, Config, ModelConfig, RuntimeConfig};
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

const SMALL: &str = r#"{"img_size": 16, "patch_size": 4, "dit_num": 2, "head": 2, "label_num": 3, "emb_size": 16, "attention": "naive"}"#;

fn inputs(dir: &Path, m: &ModelConfig) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(11);
    let x = Tensor::randn([2, m.channel, m.img_size, m.img_size], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[2i64, 0]);
    let t = Tensor::from_slice(&[999i64, 3]);
    let target = x.zeros_like();
    let named = [("x", &x), ("y", &y), ("t", &t), ("target", &target)];
    Tensor::write_safetensors(&named, dir.join("in.safetensors")).unwrap();
    (x, y, t)
}

fn python_output(dir: &Path, cfg: &Path, weights: &Path) -> Tensor {
    golden_forward(dir, cfg, weights, &dir.join("in.safetensors")).remove("out").unwrap()
}

fn convert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convert")).args(args).output().unwrap()
}

#[test]
fn pytorch_weights_load_in_rust_through_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_config(d, SMALL);
    let m = model_config(SMALL);
    let (x, y, t) = inputs(d, &m);
    let pth = d.join("torch.pth");
    golden(&["init", "--config", p(&cfg), "--seed", "5", "--out", p(&pth)]);
    let expected = python_output(d, &cfg, &pth);

    for ext in ["ot", "safetensors", "pth"] {
        let converted = d.join(format!("converted.{ext}"));
        let out = convert(&[p(&pth), p(&converted), "--config", p(&cfg)]);
        assert!(out.status.success(), "convert to .{ext}: {}", String::from_utf8_lossy(&out.stderr));
        // Load both the converted file and, for .pth, the original file directly.
        for file in [&converted, &pth] {
            let mut vs = VarStore::new(Device::Cpu);
            let dit = Dit::new(&vs.root(), &m);
            dit::checkpoint::load_weights(&mut vs, file).unwrap();
            let got = tch::no_grad(|| dit.forward(&x, &y, &t));
            let err = max_abs_diff(&got, &expected);
            assert!(err <= 1e-5, "{}: max abs error {err:e}", file.display());
        }
    }
}

#[test]
fn rust_weights_load_in_pytorch_strictly_from_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_config(d, SMALL);
    let m = model_config(SMALL);
    let (x, y, t) = inputs(d, &m);
    tch::manual_seed(9);
    let vs = VarStore::new(Device::Cpu);
    let mut dit = Dit::new(&vs.root(), &m);
    dit.set_runtime(&RuntimeConfig { attention: Attention::Naive, ..Default::default() });
    let expected = tch::no_grad(|| dit.forward(&x, &y, &t));
    for ext in ["ot", "safetensors", "pth"] {
        let file = d.join(format!("rust.{ext}"));
        dit::checkpoint::save_weights(&vs, &file).unwrap();
        // golden.py loads with load_state_dict(strict=True); .pth with torch.load's defaults
        // (weights_only=True), exactly as the original's train.py does.
        let got = python_output(d, &cfg, &file);
        let err = max_abs_diff(&got, &expected);
        assert!(err <= 1e-5, ".{ext}: max abs error {err:e}");
    }
    // What `train` writes: a .safetensors file whose header also records the run
    // (`dit_model`, `dit_diffusion`, …), which safetensors.torch.load_file ignores.
    let file = d.join("recorded.safetensors");
    let run = Config { model: m.clone(), ..Config::default() };
    let metadata =
        dit::checkpoint::Recorded::of_run(&run, &["panda".to_string()], None).to_metadata().unwrap();
    assert!(metadata.contains_key(dit::checkpoint::DIFFUSION_KEY));
    dit::checkpoint::write_tensors_with(&file, &dit::checkpoint::named_variables(&vs), metadata).unwrap();
    let err = max_abs_diff(&python_output(d, &cfg, &file), &expected);
    assert!(err <= 1e-5, "with metadata: max abs error {err:e}");
}

#[test]
fn convert_names_each_kind_of_mismatch_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = write_config(d, SMALL);
    let pth = d.join("small.pth");
    golden(&["init", "--config", p(&small), "--out", p(&pth)]);
    // A config of one block of width 24: block 1 is unexpected, every width is wrong.
    let other = d.join("other.json");
    std::fs::write(&other, r#"{"model": {"img_size": 16, "patch_size": 4, "dit_num": 1, "head": 2, "label_num": 3, "emb_size": 24}}"#).unwrap();
    let out = convert(&[p(&pth), p(&d.join("x.ot")), "--config", p(&other)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(" unexpected (model_list.1."), "{err}");
    assert!(err.contains(" mis-shaped (") && err.contains(" (file [16], model [24])"), "{err}");
    assert!(!d.join("x.ot").exists(), "nothing is written on a mismatch");

    let mut bigger = Config::from_json(&format!(r#"{{"model": {SMALL}}}"#)).unwrap();
    bigger.model.dit_num = 3;
    std::fs::write(&other, bigger.to_json()).unwrap();
    let out = convert(&[p(&pth), p(&d.join("x.ot")), "--config", p(&other)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" missing (model_list.2.") && err.contains(" more)"), "{err}");
}

#[test]
fn convert_rejects_bad_files_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let garbage = d.join("garbage.pth");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let absent = d.join("absent.pth");
    let cases = [
        (vec![p(&absent), "out.ot"], "no such file"),
        (vec![p(&garbage), "out.ot"], "garbage.pth"),
        (vec![p(&garbage), "out.txt"], "unknown weight format"),
        (vec![p(&garbage), "out.txt"], ".safetensors, .pth, .pt or .bin"),
    ];
    for (args, needle) in cases {
        let out = convert(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
