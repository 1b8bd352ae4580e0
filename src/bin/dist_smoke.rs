//! Test helper and demonstration of `dit::distributed`, run under torchrun:
//!
//! ```sh
//! .venv/bin/torchrun --no-python --nproc-per-node 2 target/release/dist_smoke
//! ```
//!
//! By default every rank checks the collectives (config check, exact all-reduce means,
//! broadcast, barrier, DDP's Reducer against a plain all-reduce) and prints `rank R: ok ...`
//! lines. `--loop` keeps all-reducing until a rank fails (tests kill one); `--bench` times
//! the all-reduce of the DiT's gradients. tests/distributed.rs drives it. `--device cuda` runs
//! the same on `cuda:LOCAL_RANK` over NCCL (scripts/gpu_check runs it there).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use dit::config::ModelConfig;
use dit::distributed::{Backend, GradReducer, Options, ProcessGroup, World};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Checks dit::distributed under torchrun (a test helper)")]
struct Args {
    /// Seconds to wait for the store and for every rank to join
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Seconds one collective may wait for a peer
    #[arg(long, default_value_t = 50.0)]
    timeout: f64,
    /// The bytes every rank compares with check_same
    #[arg(long, default_value = "config-v1")]
    config_bytes: String,
    /// This rank appends "-other" to its config bytes
    #[arg(long)]
    differ_on_rank: Option<usize>,
    /// All-reduce in a loop until something fails
    #[arg(long)]
    r#loop: bool,
    /// In --loop, this rank exits on its own after --exit-after rounds (code 3)
    #[arg(long)]
    exit_rank: Option<usize>,
    #[arg(long, default_value_t = 3)]
    exit_after: u64,
    /// Time the all-reduce of the DiT's gradients at this image size
    #[arg(long)]
    bench: Option<i64>,
    /// Timed repetitions of --bench
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// With --bench, also time a forward + backward step of this many images per rank
    #[arg(long)]
    batch: Option<i64>,
    /// Where the tensors live: cpu (Gloo) or cuda (cuda:LOCAL_RANK, NCCL)
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rank = std::env::var("RANK").unwrap_or_else(|_| "?".into());
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rank {rank}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    tch::set_num_threads(1);
    let Some(world) = World::from_env()? else {
        bail!("not launched by torchrun: RANK and WORLD_SIZE are not set")
    };
    let options = Options {
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        timeout: Duration::from_secs_f64(args.timeout),
        ..Options::default()
    };
    let device = if args.device == "cuda" { Device::Cuda(world.local_rank) } else { Device::Cpu };
    let pg = ProcessGroup::new(&world, Backend::auto(device), device, options)?;
    let r = world.rank;
    say(r, &format!("joined a group of {} ({} on {device:?})", world.world_size, pg.backend()));
    if let Some(size) = args.bench {
        return bench(&pg, size, args.iters, args.batch);
    }
    if args.r#loop {
        return spin(&pg, args);
    }

    let mut config = args.config_bytes.clone().into_bytes();
    if args.differ_on_rank == Some(r) {
        config.extend_from_slice(b"-other");
    }
    pg.check_same("the config", &config)?;
    say(r, "ok check_same");

    check_allreduce(&pg)?;
    check_broadcast(&pg)?;
    pg.barrier()?;
    say(r, "ok barrier");
    ensure!(pg.any(r == world.world_size - 1)?, "any(): the last rank's true was not seen");
    ensure!(!pg.any(false)?, "any(): nobody passed true");
    say(r, "ok any");
    check_reducer(&pg)?;
    pg.barrier()?;
    say(r, "all checks passed");
    Ok(())
}

fn say(rank: usize, msg: &str) {
    use std::io::Write;
    println!("rank {rank}: {msg}");
    let _ = std::io::stdout().flush();
}

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

fn check_allreduce(pg: &ProcessGroup) -> Result<()> {
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

fn check_broadcast(pg: &ProcessGroup) -> Result<()> {
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
fn check_reducer(pg: &ProcessGroup) -> Result<()> {
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

fn spin(pg: &ProcessGroup, args: &Args) -> Result<()> {
    let r = pg.rank();
    let t = Tensor::ones([1000], (Kind::Float, pg.device()));
    for round in 1.. {
        pg.allreduce_mean(&[t.shallow_clone()]).with_context(|| format!("round {round}"))?;
        if round == 1 {
            say(r, "looping");
        }
        if args.exit_rank == Some(r) && round >= args.exit_after {
            say(r, "exiting on purpose with code 3");
            std::process::exit(3);
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Times the all-reduce of the DiT's gradients (and, with `batch`, a forward + backward step
/// alone and with DDP's Reducer). Rank 0 prints the medians in milliseconds.
fn bench(pg: &ProcessGroup, img_size: i64, iters: usize, batch: Option<i64>) -> Result<()> {
    let cfg = ModelConfig { img_size, ..ModelConfig::default() };
    let dev = pg.device();
    // Host-side timing: a CUDA step is waited for (NCCL's waits block, see nccl_shim.cpp).
    let sync = || {
        if let Device::Cuda(i) = dev {
            tch::Cuda::synchronize(i as i64);
        }
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(dev);
    let model = dit::Dit::new(&vs.root(), &cfg);
    let params = vs.trainable_variables();
    let numel: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let grads: Vec<Tensor> = params.iter().map(|p| p.randn_like()).collect();
    let mut times = Vec::new();
    for i in 0..iters + 3 {
        sync();
        pg.barrier()?;
        let t0 = Instant::now();
        pg.allreduce_mean(&grads)?;
        sync();
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let report = |name: &str, t: &[f64]| {
        if pg.rank() == 0 {
            let mut s = t.to_vec();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "bench img {img_size} params {numel} ranks {} {name}: median {:.2} ms, min {:.2}, max {:.2} ({} runs)",
                pg.world_size(),
                median(t.to_vec()),
                s[0],
                s[s.len() - 1],
                s.len()
            );
        }
    };
    report("allreduce_mean of the gradients", &times);
    let Some(b) = batch else { return Ok(()) };
    let x = Tensor::randn([b, cfg.channel, img_size, img_size], (Kind::Float, dev));
    let y = Tensor::zeros([b], (Kind::Int64, dev));
    let t = Tensor::full([b], 500, (Kind::Int64, dev));
    let step = |reducer: Option<&mut GradReducer>, reduce_after: bool| -> Result<f64> {
        vs.trainable_variables().iter().for_each(|p| {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        sync();
        pg.barrier()?;
        let t0 = Instant::now();
        if let Some(r) = reducer {
            r.prepare(pg)?;
        }
        model
            .forward(&x, &y, &t)
            .abs()
            .mean(Kind::Float)
            .f_backward()
            .map_err(|e| pg.failure("backward", e))?;
        if reduce_after {
            let g: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
            pg.allreduce_mean(&g)?;
        }
        sync();
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    let runs = iters.clamp(3, 10);
    let mut local = Vec::new();
    let mut flat = Vec::new();
    for i in 0..runs + 1 {
        let (a, f) = (step(None, false)?, step(None, true)?);
        if i > 0 {
            local.push(a);
            flat.push(f);
        }
    }
    let mut reducer = GradReducer::new(pg, &params)?;
    let mut ddp = Vec::new();
    for i in 0..runs + 2 {
        let d = step(Some(&mut reducer), false)?;
        if i > 1 {
            ddp.push(d);
        }
    }
    report(&format!("forward+backward, batch {b}, no communication"), &local);
    report(&format!("forward+backward, batch {b}, then allreduce_mean"), &flat);
    report(&format!("forward+backward, batch {b}, DDP Reducer"), &ddp);
    pg.barrier()?;
    Ok(())
}
