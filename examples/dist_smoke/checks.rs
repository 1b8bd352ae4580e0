//! The collectives' checks: exact all-reduce means and max, broadcast from two roots, and DDP's
//! Reducer against a plain all-reduce after backward.

use anyhow::{ensure, Result};
use dit::distributed::{GradReducer, ProcessGroup};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::say;

/// Values whose sums over the ranks are exact in float32 (small multiples of 1/4).
fn ranked(rank: usize, shape: &[i64], kind: Kind, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (kind, device)) * 0.25 + (rank as f64 + 1.0)).reshape(shape)
}

fn expected_mean(world: usize, shape: &[i64], kind: Kind) -> Tensor {
    let sum = (0..world)
        .map(|r| ranked(r, shape, Kind::Double, Device::Cpu))
        .fold(Tensor::zeros(shape, (Kind::Double, Device::Cpu)), |a, b| a + b);
    (sum / world as f64).to_kind(kind)
}

pub fn check_allreduce(pg: &ProcessGroup) -> Result<()> {
    let (r, n, dev) = (pg.rank(), pg.world_size(), pg.device());
    // Two dtypes, a non-contiguous view and a tensor larger than one bucket.
    let shapes: [(&[i64], Kind); 4] =
        [(&[3, 4], Kind::Float), (&[5], Kind::Double), (&[2, 3], Kind::Float), (&[7_000_000], Kind::Float)];
    let ts: Vec<Tensor> = shapes.iter().map(|(s, k)| ranked(r, s, *k, dev)).collect();
    let transposed = ranked(r, &[4, 3], Kind::Float, dev).tr();
    let mut all: Vec<Tensor> = ts.iter().map(|t| t.shallow_clone()).collect();
    all.push(transposed.shallow_clone());
    pg.allreduce_mean(&all)?;
    let exact = n.is_power_of_two();
    for (t, (s, k)) in ts.iter().zip(shapes.iter()) {
        let want = expected_mean(n, s, *k);
        let diff = (t.to_device(Device::Cpu) - &want).abs().max().double_value(&[]);
        ensure!(if exact { diff == 0.0 } else { diff < 1e-5 }, "all-reduce mean of {s:?} is off by {diff}");
    }
    let want_t = expected_mean(n, &[4, 3], Kind::Float).tr();
    ensure!(
        transposed.to_device(Device::Cpu).equal(&want_t),
        "all-reduce mean of a transposed view is wrong"
    );
    let first: Vec<f64> =
        Vec::try_from(ts[0].flatten(0, -1).narrow(0, 0, 3).to_kind(Kind::Double).to_device(Device::Cpu))?;
    say(r, &format!("ok allreduce_mean {first:?}"));

    let m = Tensor::from_slice(&[r as f32, -(r as f32)]).to_device(dev);
    pg.allreduce_max(&[m.shallow_clone()])?;
    let got: Vec<f32> = Vec::try_from(m.to_device(Device::Cpu))?;
    ensure!(got == [(n - 1) as f32, 0.0], "all-reduce max gave {got:?}");
    say(r, "ok allreduce_max");
    Ok(())
}

pub fn check_broadcast(pg: &ProcessGroup) -> Result<()> {
    let (r, n, dev) = (pg.rank(), pg.world_size(), pg.device());
    for root in [0, n - 1] {
        let a = ranked(r, &[2, 5], Kind::Float, dev);
        let b = Tensor::full([3], r as i64, (Kind::Int64, dev));
        pg.broadcast(&[a.shallow_clone(), b.shallow_clone()], root)?;
        ensure!(
            a.equal(&ranked(root, &[2, 5], Kind::Float, dev)),
            "broadcast from {root}: float tensor differs"
        );
        ensure!(
            b.equal(&Tensor::full([3], root as i64, (Kind::Int64, dev))),
            "broadcast from {root}: ints differ"
        );
        let v: Vec<i64> = Vec::try_from(b.to_device(Device::Cpu))?;
        say(r, &format!("ok broadcast from {root} {v:?}"));
    }
    Ok(())
}

/// A small MLP trained for a few steps on rank-dependent inputs: DDP's Reducer (gradients
/// averaged during backward) must give exactly the gradients of a plain all-reduce after
/// backward, and keep the replicas identical.
pub fn check_reducer(pg: &ProcessGroup) -> Result<()> {
    let (r, dev) = (pg.rank(), pg.device());
    let build = || {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(dev);
        let root = vs.root();
        let net = nn::seq()
            .add(nn::linear(&root / "a", 6, 16, Default::default()))
            .add_fn(|x| x.gelu("none"))
            .add(nn::linear(&root / "b", 16, 3, Default::default()));
        (vs, net)
    };
    let (vs_a, net_a) = build();
    let (vs_b, net_b) = build();
    let params_a = vs_a.trainable_variables();
    let params_b = vs_b.trainable_variables();
    let mut reducer = GradReducer::new(pg, &params_a)?;
    let mut opt_a = nn::Sgd::default().build(&vs_a, 0.1)?;
    let mut opt_b = nn::Sgd::default().build(&vs_b, 0.1)?;
    for step in 0..4 {
        tch::manual_seed(100 + step * 10 + r as i64);
        let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu)).to_device(dev);
        opt_a.zero_grad();
        opt_b.zero_grad();
        reducer.prepare(pg)?;
        net_a.forward(&x).square().mean(Kind::Float).f_backward().map_err(|e| pg.failure("backward", e))?;
        net_b.forward(&x).square().mean(Kind::Float).backward();
        let grads_b: Vec<Tensor> = params_b.iter().map(|p| p.grad()).collect();
        pg.allreduce_mean(&grads_b)?;
        for (pa, pb) in params_a.iter().zip(&params_b) {
            let diff = (pa.grad() - pb.grad()).abs().max().double_value(&[]);
            ensure!(diff <= 1e-7, "step {step}: Reducer and all-reduce gradients differ by {diff}");
        }
        opt_a.step();
        opt_b.step();
    }
    // The replicas must agree across ranks: compare a fingerprint of the weights.
    let bytes: Vec<u8> = params_a
        .iter()
        .flat_map(|p| Vec::<f32>::try_from(p.flatten(0, -1).to_device(Device::Cpu)).unwrap())
        .flat_map(f32::to_le_bytes)
        .collect();
    pg.check_same("the Reducer-trained weights", &bytes)?;
    say(r, "ok reducer");
    Ok(())
}
