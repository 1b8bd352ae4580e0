//! Label-conditional generation: label dropout adds a "no label" row that the original can
//! load (as `label_num + 1`), and classifier-free guidance mixes both predictions.

mod common;

use std::path::Path;

use common::*;
use dit::diffusion::Schedule;
use dit::sampling::{self, SampleOptions, SamplerKind};
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The tiny model on the two-class built-in data with label dropout, and a short schedule.
const PANDAS2: &str = r#"{
  "model": {"label_num": 2}, "diffusion": {"max_t": 50},
  "train": {"data_path": "builtin:pandas2", "cfg_dropout": 0.2}
}"#;

/// Trains the tiny config with `overrides` (after [`PANDAS2`]) in `d`.
fn train(d: &Path, overrides: &[&str], extra: &[&str]) -> std::process::Output {
    write_tiny_config(d, "c.json", &[&[PANDAS2], overrides].concat());
    let args = ["--config", "c.json", "--device", "cpu", "--seed", "2", "--logdir", "logs"];
    run_bin(env!("CARGO_BIN_EXE_train"), d, &[&args[..], extra].concat())
}

#[test]
fn label_dropout_adds_a_no_label_row_the_original_loads_as_label_num_plus_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = train(d, &[], &["--checkpoint", "w.pth", "--max-steps", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("classes (label order): panda, red_panda"));
    let w: std::collections::HashMap<_, _> =
        dit::checkpoint::read_tensors(&d.join("w.pth")).unwrap().into_iter().collect();
    assert_eq!(w["label_emb.weight"].size(), [3, 16]);
    let st = dit::checkpoint::state::load(&d.join("w.pth.state.safetensors")).unwrap();
    assert!(st.meta.config.model.null_label);
    assert_eq!(st.meta.classes, ["panda", "red_panda"]);
    // The Python reference, built as the original with label_num + 1, loads it strictly.
    let cfg = write_tiny_config(d, "original.json", &[PANDAS2, r#"{"model": {"label_num": 3}}"#]);
    let x = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    python_forward(d, &cfg, &d.join("w.pth"), &x, 2, 5);

    // Without dropout the shapes stay the original's.
    let out =
        train(d, &[r#"{"train": {"cfg_dropout": 0}}"#], &["--checkpoint", "plain.ot", "--max-steps", "1"]);
    assert!(out.status.success());
    let w: std::collections::HashMap<_, _> =
        dit::checkpoint::read_tensors(&d.join("plain.ot")).unwrap().into_iter().collect();
    assert_eq!(w["label_emb.weight"].size(), [2, 16]);

    // More classes than labels is refused.
    let out = train(d, &[r#"{"model": {"label_num": 1}}"#], &["--checkpoint", "x.ot"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 classes") && err.contains("label_num is 1"), "{err}");

    // Guidance from the binary: works on this model, refused on one without the extra row.
    let sample = |ckpt: &str, w: &str| {
        let args = ["--sampler", "ddim", "--steps", "5", "--num", "2", "--device", "cpu", "--out", "s.png"];
        let guided = ["--checkpoint", ckpt, "--label", "red_panda", "--guidance", w];
        run_bin(env!("CARGO_BIN_EXE_sample"), d, &[&args[..], &guided].concat())
    };
    let ok = sample("w.pth", "3");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = sample("plain.ot", "3");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("cfg_dropout") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn guidance_weight_zero_is_unconditional_and_one_is_conditional() {
    let _rng = rng_lock();
    let cfg = tiny(&[PANDAS2]);
    let mut m = cfg.model.clone();
    m.null_label = true;
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let model = Dit::new(&vs.root(), &m);
    let schedule = Schedule::new(&cfg.diffusion, Device::Cpu);
    let run = |label: i64, guidance: Option<f64>| {
        let opts = SampleOptions {
            sampler: SamplerKind::Ddim,
            steps: 10,
            eta: 0.0,
            keep: vec![],
            guidance,
            shift: None,
            cfg_interval_start: None,
        };
        tch::manual_seed(3);
        let noise = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let labels = Tensor::full([2], label, (Kind::Int64, Device::Cpu));
        sampling::sample(&model, &schedule, &opts, noise, &labels, &mut |_, _| {}).unwrap().0
    };
    // W = 0 ignores the label entirely.
    assert!(max_abs_diff(&run(0, Some(0.0)), &run(1, Some(0.0))) < 1e-6);
    // W = 1 is the plain conditional model.
    assert!(run(1, Some(1.0)).equal(&run(1, None)));
    // W = 3 depends on the label, and differs from W = 1.
    assert!(max_abs_diff(&run(0, Some(3.0)), &run(1, Some(3.0))) > 1e-3);
    assert!(max_abs_diff(&run(1, Some(3.0)), &run(1, None)) > 1e-3);
}

#[test]
fn shared_label_init_starts_every_class_from_row_zero_and_draws_nothing_extra() {
    let _rng = rng_lock();
    let cfg = tiny(&[r#"{"model": {"label_num": 3}}"#]).model;
    let build = || {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let model = Dit::new(&vs.root(), &cfg);
        (vs, model)
    };
    let (independent, _) = build();
    let (shared, model) = build();
    model.share_label_rows();
    let (a, b) = (independent.variables(), shared.variables());
    for (name, t) in &a {
        if name != "label_emb.weight" {
            assert!(t.equal(&b[name]), "{name} changed");
        }
    }
    let (wa, wb) = (&a["label_emb.weight"], &b["label_emb.weight"]);
    assert!(wb.get(0).equal(&wa.get(0)), "row 0 keeps PyTorch's draw");
    assert!(wb.get(1).equal(&wa.get(0)) && wb.get(2).equal(&wa.get(0)));
    assert!(!wa.get(1).equal(&wa.get(0)), "independent rows differ");

    // Wired into training: after one Adam step (lr 0.001) the shared rows are still within a
    // few lr of each other, the independent ones a N(0, 1) draw apart.
    let spread = |label_init: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(r#"{{"train": {{"cfg_dropout": 0, "label_init": "{label_init}"}}}}"#);
        let out = train(dir.path(), &[&config], &["--checkpoint", "w.ot", "--max-steps", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let w: std::collections::HashMap<_, _> =
            dit::checkpoint::read_tensors(&dir.path().join("w.ot")).unwrap().into_iter().collect();
        let w = &w["label_emb.weight"];
        (w.get(1) - w.get(0)).abs().max().double_value(&[])
    };
    assert!(spread("shared") < 0.01, "shared: {}", spread("shared"));
    assert!(spread("independent") > 0.5, "independent: {}", spread("independent"));
}
