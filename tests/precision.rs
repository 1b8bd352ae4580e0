//! bf16 mixed precision (`model.precision`): the products run in bfloat16, everything the
//! optimiser sees stays float32, and the numbers track the float32 path closely. Run on the
//! CPU here; the same code path is what CUDA runs.

mod common;

use common::*;
use dit::config::{Attention, Precision, RuntimeConfig};
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Forward output and the loss gradients of every parameter, in `precision`.
fn forward_and_grads(model: &mut Dit, vs: &VarStore, runtime: RuntimeConfig) -> (Tensor, Vec<Tensor>) {
    model.set_runtime(&runtime);
    tch::manual_seed(11);
    let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let (y, t) = (Tensor::from_slice(&[0i64, 1, 0, 1]), Tensor::from_slice(&[3i64, 250, 600, 999]));
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &mut vars {
        v.zero_grad();
    }
    let out = model.forward(&x, &y, &t);
    (&out - &target).square().mean(Kind::Float).backward();
    (out.detach(), vars.iter().map(|(_, v)| v.grad().copy()).collect())
}

#[test]
fn bf16_forward_and_gradients_track_fp32_and_stay_float32() {
    let _rng = rng_lock();
    for attention in [Attention::Naive, Attention::Fused] {
        let cfg = tiny(&[r#"{"model": {"dit_num": 2, "label_num": 2}}"#]).model;
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let mut model = Dit::new(&vs.root(), &cfg);
        let fp32 = RuntimeConfig { attention, precision: Precision::Fp32, ..Default::default() };
        let (out32, g32) = forward_and_grads(&mut model, &vs, fp32);
        let (out16, g16) =
            forward_and_grads(&mut model, &vs, RuntimeConfig { precision: Precision::Bf16, ..fp32 });
        assert_eq!(out16.kind(), Kind::Float);
        let e = rel_diff(&out16, &out32);
        // bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation).
        assert!(e < 3e-2 && e > 1e-5, "{attention:?}: forward relative error {e} (0 would mean fp32 ran)");
        for g in &g16 {
            assert_eq!(g.kind(), Kind::Float, "gradients arrive in float32");
        }
        let flat = |gs: &[Tensor]| Tensor::cat(&gs.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(), 0);
        let ge = rel_diff(&flat(&g16), &flat(&g32));
        eprintln!("{attention:?}: forward {e}, gradients {ge}");
        // Measured 0.04 at this width (MSE loss: an L1 loss's sign flips would dominate).
        assert!(ge < 0.1, "{attention:?}: gradient relative error {ge}");
        for (_, v) in vs.variables() {
            assert_eq!(v.kind(), Kind::Float, "weights stay float32");
        }
    }
}

#[test]
fn bf16_training_saves_float32_weights_resumes_in_fp32_and_samples_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_config(d, "c.json", &[r#"{"train": {"epoch": 3}}"#]);
    let train = env!("CARGO_BIN_EXE_train");
    let common = ["--config", "c.json", "--device", "cpu", "--seed", "3", "--checkpoint", "w.safetensors"];
    run_ok(train, d, &[&common[..], &["--precision", "bf16", "--max-steps", "3"]].concat());
    for (name, w) in read(&d.join("w.safetensors")) {
        assert_eq!(w.kind(), Kind::Float, "{name}");
        assert!(bool::try_from(w.isfinite().all()).unwrap(), "{name} not finite");
    }
    // The precision is not part of the weights: the run resumes in fp32.
    let out = run_ok(train, d, &[&common[..], &["--max-steps", "5"]].concat());
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming from"));

    let sample = env!("CARGO_BIN_EXE_sample");
    let draw = |precision: &str, file: &str| {
        let args = ["--checkpoint", "w.safetensors", "--device", "cpu", "--sampler", "ddim", "--steps", "10"];
        run_ok(
            sample,
            d,
            &[&args[..], &["--num", "4", "--precision", precision, "--tensor-out", file]].concat(),
        );
        read(&d.join(file)).remove("images").unwrap()
    };
    let (a, b) = (draw("fp32", "a.safetensors"), draw("bf16", "b.safetensors"));
    let e = (&a - &b).abs().mean(Kind::Float).double_value(&[]);
    // The scale of a real difference: the same model's samples from other noise (measured:
    // bf16 moves a 5-step model's DDIM-10 samples by about a quarter of that).
    let other = (&a - a.roll([1], [0])).abs().mean(Kind::Float).double_value(&[]);
    eprintln!("bf16 vs fp32 {e}, other noise {other}");
    assert!(e > 0.0 && e < 0.5 * other, "bf16 vs fp32 samples: mean abs difference {e}, other noise {other}");
}
