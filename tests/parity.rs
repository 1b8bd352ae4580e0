//! Golden parity with the project's Python reference of the original (tests/python): parameter
//! names and shapes, forward outputs and L1-loss gradients (fp32, CPU), the schedule tables.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use dit::config::{Attention, Config, ModelConfig, RuntimeConfig};
use dit::diffusion::Schedule;
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

const SMALL: &str =
    r#"{"img_size": 32, "patch_size": 4, "dit_num": 2, "head": 3, "label_num": 2, "emb_size": 32}"#;
const SEED: &str = "{}";

/// The state_dict of docs/ORIGINAL.md §2, written out from the specification (not from the model).
fn spec_shapes(m: &ModelConfig) -> BTreeMap<String, Vec<i64>> {
    let (c, p, e, h) = (m.channel, m.patch_size, m.emb_size, m.head);
    let pd = c * p * p;
    let mut s = BTreeMap::new();
    let mut put = |k: String, v: Vec<i64>| assert!(s.insert(k, v).is_none());
    put("position_emb".into(), vec![1, m.tokens(), e]);
    put("conv.weight".into(), vec![pd, c, p, p]);
    put("conv.bias".into(), vec![pd]);
    put("label_emb.weight".into(), vec![m.label_num, e]);
    put("patch_emb.weight".into(), vec![e, pd]);
    put("patch_emb.bias".into(), vec![e]);
    put("time_emb.0.mlp.0.weight".into(), vec![e, 256]);
    put("time_emb.0.mlp.0.bias".into(), vec![e]);
    for k in ["time_emb.0.mlp.2", "time_emb.1", "time_emb.3"] {
        put(format!("{k}.weight"), vec![e, e]);
        put(format!("{k}.bias"), vec![e]);
    }
    for i in 0..m.dit_num {
        let b = format!("model_list.{i}");
        for k in ["alfa_emb_1", "gama_emb_1", "beita_emb_1", "alfa_emb_2", "gama_emb_2", "beita_emb_2"] {
            put(format!("{b}.{k}.weight"), vec![e, e]);
            put(format!("{b}.{k}.bias"), vec![e]);
        }
        for k in ["ln_1", "ln_2"] {
            put(format!("{b}.{k}.weight"), vec![e]);
            put(format!("{b}.{k}.bias"), vec![e]);
        }
        for k in ["q_emb", "k_emb", "v_emb"] {
            put(format!("{b}.{k}.weight"), vec![h * e, e]);
            put(format!("{b}.{k}.bias"), vec![h * e]);
        }
        put(format!("{b}.feed_forward.0.weight"), vec![4 * e, e]);
        put(format!("{b}.feed_forward.0.bias"), vec![4 * e]);
        put(format!("{b}.feed_forward.2.weight"), vec![e, 4 * e]);
        put(format!("{b}.feed_forward.2.bias"), vec![e]);
        put(format!("{b}.linear_back.weight"), vec![e, h * e]);
        put(format!("{b}.linear_back.bias"), vec![e]);
    }
    put("ln.weight".into(), vec![e]);
    put("ln.bias".into(), vec![e]);
    put("linear.weight".into(), vec![pd, e]);
    put("linear.bias".into(), vec![pd]);
    s
}

#[test]
fn keys_and_shapes_equal_the_specification() {
    for json in [SEED, SMALL] {
        let m = model_config(json);
        let spec = spec_shapes(&m);
        assert_eq!(dit::checkpoint::expected_shapes(&m), spec, "model {json}");
        // And the Python reference's state_dict agrees with the same table.
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), json);
        let py: BTreeMap<String, Vec<i64>> =
            serde_json::from_str(&golden(&["keys", "--config", p(&cfg)])).unwrap();
        assert_eq!(py, spec, "reference {json}");
    }
    let seed = spec_shapes(&model_config(SEED));
    assert_eq!(seed.len(), 102);
    assert_eq!(seed.values().map(|s| s.iter().product::<i64>()).sum::<i64>(), 773_344);
}

#[test]
fn position_emb_is_uniform_in_unit_interval() {
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let _dit = Dit::new(&vs.root(), &model_config(SEED));
    let pe = &vs.variables()["position_emb"];
    let (lo, hi) = (pe.min().double_value(&[]), pe.max().double_value(&[]));
    assert!(lo >= 0.0 && hi < 1.0 && hi > 0.99 && lo < 0.01, "[{lo}, {hi}]");
}

/// Random weights (every tensor, LayerNorms included, so no term is trivially 0 or 1) and
/// inputs, saved for Python; returns the Rust model.
fn setup(
    dir: &std::path::Path,
    m: &ModelConfig,
    batch: i64,
    attention: Attention,
) -> (VarStore, Dit, Tensor, Tensor, Tensor, Tensor) {
    let _rng = rng_lock();
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let mut dit = Dit::new(&vs.root(), m);
    dit.set_runtime(&RuntimeConfig { attention, ..Default::default() });
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains("ln") {
                t.copy_(&(t.rand_like() * 0.5 + 0.75));
            }
        }
    });
    dit::checkpoint::save_weights(&vs, &dir.join("w.safetensors")).unwrap();
    let i = m.img_size;
    let x = Tensor::randn([batch, m.channel, i, i], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(m.label_num, [batch], (Kind::Int64, Device::Cpu));
    let t = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
    let target = Tensor::randn([batch, m.channel, i, i], (Kind::Float, Device::Cpu));
    let inputs = [("x", &x), ("y", &y), ("t", &t), ("target", &target)];
    Tensor::write_safetensors(&inputs, dir.join("in.safetensors")).unwrap();
    (vs, dit, x, y, t, target)
}

/// Per-tensor relative gradient bounds. Against a reference that computes attention the same
/// way (naive against the original's math, fused against PyTorch's own `sdpa` call, the same
/// libtorch kernel): 1e-5, the specification's bound; measured at most 6e-7. Fused against the
/// original's math as well: libtorch's CPU flash kernel (blocked online softmax) rounds
/// differently from the math path, by up to 2.9e-4 on `position_emb` at 4096 tokens for some
/// random draws (1.5e-4 on another, 5e-7 on this test's), so that comparison is held to 1e-3,
/// far below what a wrong scale, mask or layout gives.
const SAME_KERNEL: f64 = 1e-5;
const FUSED_VS_MATH: f64 = 1e-3;

/// The largest per-tensor relative difference between `grads` and the reference's `grad.<name>`,
/// and its tensor. A key bias is analytically zero (it adds the same q·b to every score of a
/// row, which softmax ignores): both sides must agree it is rounding noise, and it is skipped.
fn worst_gradient(grads: &[(String, Tensor)], reference: &HashMap<String, Tensor>) -> (f64, String) {
    let total = grads.iter().map(|(_, g)| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    let mut worst = (0.0, String::new());
    for (name, grad) in grads {
        let want = &reference[&format!("grad.{name}")];
        if name.ends_with("k_emb.bias") {
            for g in [grad, want] {
                let n = g.norm().double_value(&[]);
                assert!(n <= 1e-6 * total, "{name}: gradient norm {n:e} is not negligible");
            }
            continue;
        }
        let rel = rel_diff(grad, want);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}

fn forward_and_gradients(json: &str, batch: i64, attention: Attention) {
    let dir = tempfile::tempdir().unwrap();
    let m = model_config(json);
    let cfg = write_config(dir.path(), json);
    let (vs, dit, x, y, t, target) = setup(dir.path(), &m, batch, attention);
    let d = dir.path();
    let (w, inputs) = (d.join("w.safetensors"), d.join("in.safetensors"));
    let py = golden_forward(d, &cfg, &w, &inputs);

    let out = dit.forward(&x, &y, &t);
    let err = max_abs_diff(&out, &py["out"]);
    assert!(err <= 1e-5, "{attention:?} forward max abs error {err:e}");

    let loss = out.l1_loss(&target, tch::Reduction::Mean);
    loss.backward();

    let grads: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, v)| (n, v.grad())).collect();
    let math = worst_gradient(&grads, &py);
    let (worst, bound) = match attention {
        Attention::Fused => {
            assert!(
                math.0 <= FUSED_VS_MATH,
                "fused gradient of {} off the math path by {:e}",
                math.1,
                math.0
            );
            (worst_gradient(&grads, &golden_forward_with(d, &cfg, &w, &inputs, "sdpa")), SAME_KERNEL)
        }
        _ => (math.clone(), SAME_KERNEL),
    };
    assert!(worst.0 <= bound, "{attention:?} gradient of {} off by {:e} (relative)", worst.1, worst.0);
    eprintln!(
        "{json} {attention:?}: forward max abs {err:e}, worst gradient {:e} ({}), against the math path {:e}",
        worst.0, worst.1, math.0
    );
}

#[test]
fn small_setting_matches_reference_fused() {
    forward_and_gradients(SMALL, 3, Attention::Fused);
}

#[test]
fn small_setting_matches_reference_naive() {
    forward_and_gradients(SMALL, 3, Attention::Naive);
}

#[test]
fn seed_setting_matches_reference_fused() {
    forward_and_gradients(SEED, 1, Attention::Fused);
}

#[test]
fn seed_setting_matches_reference_naive() {
    forward_and_gradients(SEED, 1, Attention::Naive);
}

#[test]
fn schedule_tables_equal_pytorch_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for diffusion in ["{}", r#"{"max_t": 50, "beta_start": 0.001, "beta_end": 0.05}"#] {
        let cfg = dir.path().join("c.json");
        std::fs::write(&cfg, format!(r#"{{"diffusion": {diffusion}}}"#)).unwrap();
        let out = dir.path().join("s.safetensors");
        golden(&["schedule", "--config", p(&cfg), "--out", p(&out)]);
        let py = read(&out);
        let s = Schedule::new(&Config::load(&cfg).unwrap().diffusion, Device::Cpu);
        for (name, t) in [
            ("betas", &s.betas),
            ("alphas", &s.alphas),
            ("alphas_cumprod", &s.alphas_cumprod),
            ("alphas_cumprod_prev", &s.alphas_cumprod_prev),
            ("variance", &s.variance),
        ] {
            assert!(t.equal(&py[name]), "{name} differs from PyTorch ({diffusion})");
        }
    }
}
