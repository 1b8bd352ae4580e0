//! The whole training step against the Python reference: from the same weights, images, labels
//! and random draws, `Trainer::step_with` + `apply` (forward, the loss of every objective,
//! backward, clipping, Adam, EMA) gives PyTorch's loss, clipped gradients, weights and EMA. Any fault in the step itself
//! (as opposed to a device's kernels, which `scripts/gpu_check` compares) shows up here.

mod common;

use std::path::PathBuf;

use common::{golden, p, read, rel_diff, rng_lock, write_tiny_config};
use dit::checkpoint::state::TrainMeta;
use dit::config::Config;
use dit::train::Trainer;
use tch::{Device, Kind, Tensor};

#[test]
fn one_training_step_matches_the_reference_step() {
    step_matches_the_reference("{}", true);
}

/// Every prediction target with each distance and weighting (the default is the test above).
#[test]
fn every_objective_matches_the_reference_step() {
    for prediction in ["epsilon", "x0", "v"] {
        for (loss, weighting) in [("l1", "min_snr"), ("l2", "none"), ("l2", "min_snr")] {
            let objective = format!(
                r#"{{"diffusion": {{"prediction": "{prediction}"}},
                    "train": {{"loss": "{loss}", "loss_weighting": "{weighting}", "min_snr_gamma": 4}}}}"#
            );
            step_matches_the_reference(&objective, false);
        }
        let plain_l1 = format!(r#"{{"diffusion": {{"prediction": "{prediction}"}}}}"#);
        step_matches_the_reference(&plain_l1, false);
    }
}

/// One step from the same weights, images and draws, in Rust and in the reference, with the
/// config `objective` merged in; `clipped` asks that the gradient norm exceed the clip.
fn step_matches_the_reference(objective: &str, clipped: bool) {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 64 tokens, two blocks, naive attention (the reference's); the initial gradient norm
    // (about 0.27 with the default objective) is above the clip of 0.1, so clipping scales
    // every gradient.
    let overrides = r#"{"model": {"img_size": 32, "dit_num": 2, "head": 3, "emb_size": 32},
        "diffusion": {"max_t": 1000}, "train": {"lr": 0.002, "grad_clip": 0.1, "ema_decay": 0.995},
        "runtime": {"attention": "naive"}}"#;
    let cfg_path = write_tiny_config(d, "step.json", &[overrides, objective]);
    let cfg = Config::load(&cfg_path).unwrap();
    let meta = TrainMeta::fresh(4, vec![], cfg);
    let mut tr = Trainer::new(meta, Device::Cpu, PathBuf::from("unused.ot"));
    let weights = d.join("w.safetensors");
    dit::checkpoint::write_tensors(&weights, &tr.named_params()).unwrap();
    let w0: Vec<(String, Tensor)> =
        tr.named_params().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();

    let b = 6;
    let draws = tr.draws(b);
    tch::manual_seed(12);
    let images = Tensor::randint(256, [b, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
    let inputs = d.join("in.safetensors");
    let named = [("images", &images), ("labels", &labels), ("t", &draws.t), ("noise", &draws.noise)];
    Tensor::write_safetensors(&named, &inputs).unwrap();
    let out = d.join("py.safetensors");
    golden(&[
        "step",
        "--config",
        p(&cfg_path),
        "--weights",
        p(&weights),
        "--inputs",
        p(&inputs),
        "--out",
        p(&out),
    ]);
    let py = read(&out);

    let step = tr.step_with(&images, &labels, &draws);
    let loss = step.loss.double_value(&[]);
    let py_loss = py["loss"].double_value(&[0]);
    assert!((loss - py_loss).abs() <= 1e-6 * py_loss, "{objective}: loss {loss} against {py_loss}");
    let norm = step.grad_norm.double_value(&[]);
    assert!(!clipped || norm > 0.1, "the test needs clipping to act; gradient norm {norm}");
    for (name, g) in tr.named_grads() {
        let want = &py[&format!("grad.{name}")];
        if name.ends_with("k_emb.bias") {
            // Zero in exact arithmetic (softmax ignores a shift shared by every key).
            assert!(
                g.abs().max().double_value(&[]) < 1e-6 && want.abs().max().double_value(&[]) < 1e-6,
                "{name}"
            );
            continue;
        }
        let err = rel_diff(&g, want);
        assert!(err <= 1e-5, "{objective}: clipped gradient {name} off by {err:e} (relative)");
    }
    tr.apply(0.002);
    // Adam's first step is lr·g/|g| per entry: compare against the size of the update. The key
    // biases' gradients are rounding noise, so their update's sign is noise too: skipped.
    let ema = tr.named_ema();
    for ((name, w), (_, w0)) in
        tr.named_params().iter().zip(&w0).filter(|((n, _), _)| !n.ends_with("k_emb.bias"))
    {
        let update = (&py[&format!("param.{name}")] - w0).norm().double_value(&[]);
        let err = (w - &py[&format!("param.{name}")]).norm().double_value(&[]) / update;
        assert!(err <= 1e-4, "{objective}: weights {name} after Adam off by {err:e} of the update"); // measured ≤ 3e-5
        let e = &ema.iter().find(|(n, _)| n == name).unwrap().1;
        let ema_step = (&py[&format!("ema.{name}")] - w0).norm().double_value(&[]);
        let err = (e - &py[&format!("ema.{name}")]).norm().double_value(&[]) / ema_step;
        // float32 rounding of w (~0.1) against an EMA step of 0.005·update: measured ≤ 4e-3
        assert!(err <= 1e-2, "{objective}: EMA {name} off by {err:e} of its step");
    }
}
