//! Activation checkpointing (`runtime.activation_checkpointing: blocks`, `src/model/checkpointing.rs`)
//! computes the gradients of the ordinary backward pass: bit for bit with naive attention on
//! the CPU, within the fused kernel's own non-determinism otherwise; and a whole training step
//! with it ends on the same weights.

mod common;

use std::path::PathBuf;

use common::*;
use dit::checkpoint::state::TrainMeta;
use dit::config::{ActivationCheckpointing, Attention, Precision, RuntimeConfig};
use dit::train::Trainer;
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Output and every parameter's gradient (sorted by name) of an L1 loss, under `runtime`.
fn output_and_grads(
    model: &mut Dit,
    vs: &VarStore,
    runtime: RuntimeConfig,
) -> (Tensor, Vec<(String, Tensor)>) {
    model.set_runtime(&runtime);
    tch::manual_seed(11);
    let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    // Label 2 is the "no label" row: label dropout's case.
    let (y, t) = (Tensor::from_slice(&[0i64, 1, 2, 1]), Tensor::from_slice(&[3i64, 250, 600, 999]));
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &mut vars {
        v.zero_grad();
    }
    let pass = model.forward_for_training(&x, &y, &t);
    let output = pass.output.detach();
    let loss = pass.output.l1_loss(&target, tch::Reduction::Mean);
    pass.backward(model, &loss);
    (output, vars.iter().map(|(n, v)| (n.clone(), v.grad().copy())).collect())
}

#[test]
fn checkpointed_gradients_equal_the_ordinary_ones() {
    let _rng = rng_lock();
    let cfg = tiny(&[r#"{"model": {"dit_num": 3, "label_num": 2, "null_label": true}}"#]).model;
    for precision in [Precision::Fp32, Precision::Bf16] {
        for attention in [Attention::Naive, Attention::Fused] {
            tch::manual_seed(4);
            let vs = VarStore::new(Device::Cpu);
            let mut model = Dit::new(&vs.root(), &cfg);
            let plain = RuntimeConfig {
                attention,
                precision,
                activation_checkpointing: ActivationCheckpointing::None,
            };
            let (out_a, grads_a) = output_and_grads(&mut model, &vs, plain);
            let blocks = RuntimeConfig { activation_checkpointing: ActivationCheckpointing::Blocks, ..plain };
            let (out_b, grads_b) = output_and_grads(&mut model, &vs, blocks);
            assert!(out_a.equal(&out_b), "{precision:?} {attention:?}: the forward output changed");
            assert_eq!(grads_a.len(), grads_b.len());
            for ((name, a), (_, b)) in grads_a.iter().zip(&grads_b) {
                assert!(a.defined() && b.defined(), "{name}: no gradient");
                if attention == Attention::Naive {
                    assert!(a.equal(b), "{precision:?} naive: {name} differs by {:e}", rel_diff(a, b));
                } else {
                    // libtorch's fused CPU backward is not deterministic run to run (README, Tests).
                    let d = rel_diff(a, b);
                    assert!(d <= 1e-4, "{precision:?} fused: {name} relative difference {d:e}");
                }
            }
        }
    }
}

/// One training step (label dropout on, two micro-batches) from the same seed, with and
/// without checkpointing: the gradients, the weights after Adam and the EMA.
fn step_weights(checkpointing: ActivationCheckpointing) -> Vec<(String, Tensor)> {
    let mut cfg = tiny(&[r#"{"model": {"dit_num": 3}, "train": {"cfg_dropout": 0.5, "grad_accum_steps": 2},
                             "runtime": {"attention": "naive"}}"#]);
    cfg.model.null_label = true;
    cfg.runtime.activation_checkpointing = checkpointing;
    let mut tr = Trainer::new(TrainMeta::fresh(9, vec![], cfg), Device::Cpu, PathBuf::from("unused.ot"));
    let images = Tensor::randint(256, [16, 3, 16, 16], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::zeros([16], (Kind::Int64, Device::Cpu));
    let out = tr.step(&images, &labels);
    assert!(out.loss.double_value(&[]).is_finite());
    let grads: Vec<(String, Tensor)> =
        tr.named_grads().into_iter().map(|(n, g)| (format!("grad {n}"), g.copy())).collect();
    tr.apply(1e-3);
    grads.into_iter().chain(tr.named_params()).chain(tr.named_ema()).collect()
}

#[test]
fn a_checkpointed_training_step_ends_on_the_same_weights() {
    let _rng = rng_lock();
    let (a, b) = (step_weights(ActivationCheckpointing::None), step_weights(ActivationCheckpointing::Blocks));
    assert_eq!(a.len(), b.len());
    for ((name, a), (_, b)) in a.iter().zip(&b) {
        assert!(a.equal(b), "{name} differs by {:e}", rel_diff(a, b));
    }
}
