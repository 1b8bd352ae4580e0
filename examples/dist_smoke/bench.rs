//! `--bench`: the all-reduce of the DiT's gradients, timed, and with `--batch` a forward and
//! backward step alone, followed by an all-reduce, and with DDP's Reducer. Rank 0 prints the
//! medians in milliseconds.

use std::time::Instant;

use anyhow::Result;
use dit::config::ModelConfig;
use dit::distributed::{GradReducer, ProcessGroup};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// The model and inputs every rank times, and how to wait for its device.
struct Setup<'a> {
    pg: &'a ProcessGroup,
    img_size: i64,
    vs: nn::VarStore,
    model: dit::Dit,
    params: Vec<Tensor>,
}

impl Setup<'_> {
    /// Host-side timing: a CUDA step is waited for (NCCL's waits block, see nccl_shim.cpp).
    fn sync(&self) {
        if let Device::Cuda(i) = self.pg.device() {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// Rank 0 prints the median, minimum and maximum of `times` (ms).
    fn report(&self, name: &str, times: &[f64]) {
        if self.pg.rank() != 0 {
            return;
        }
        let mut s = times.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let numel: i64 = self.params.iter().map(|p| p.numel() as i64).sum();
        println!(
            "bench img {} params {numel} ranks {} {name}: median {:.2} ms, min {:.2}, max {:.2} ({} runs)",
            self.img_size,
            self.pg.world_size(),
            s[s.len() / 2],
            s[0],
            s[s.len() - 1],
            s.len()
        );
    }
}

/// Times the all-reduce at `img_size` (`iters` runs after 3 warm-ups) and, with `batch`, the
/// steps of [`bench_steps`].
pub fn bench(pg: &ProcessGroup, img_size: i64, iters: usize, batch: Option<i64>) -> Result<()> {
    let cfg = ModelConfig { img_size, ..ModelConfig::default() };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(pg.device());
    let model = dit::Dit::new(&vs.root(), &cfg);
    let params = vs.trainable_variables();
    let setup = Setup { pg, img_size, vs, model, params };
    let grads: Vec<Tensor> = setup.params.iter().map(|p| p.randn_like()).collect();
    let mut times = Vec::new();
    for i in 0..iters + 3 {
        setup.sync();
        pg.barrier()?;
        let t0 = Instant::now();
        pg.allreduce_mean(&grads)?;
        setup.sync();
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    setup.report("allreduce_mean of the gradients", &times);
    if let Some(b) = batch {
        bench_steps(&setup, &cfg, b, iters.clamp(3, 10))?;
    }
    pg.barrier()?;
    Ok(())
}

/// One forward + backward of `b` images per rank, timed `runs` times after a warm-up: with no
/// communication, then all-reduced, then with DDP's Reducer (two warm-ups: its first step
/// learns the buckets).
fn bench_steps(setup: &Setup, cfg: &ModelConfig, b: i64, runs: usize) -> Result<()> {
    let (pg, dev, i) = (setup.pg, setup.pg.device(), setup.img_size);
    let x = Tensor::randn([b, cfg.channel, i, i], (Kind::Float, dev));
    let y = Tensor::zeros([b], (Kind::Int64, dev));
    let t = Tensor::full([b], 500, (Kind::Int64, dev));
    let step = |reducer: Option<&mut GradReducer>, reduce_after: bool| -> Result<f64> {
        for p in setup.vs.trainable_variables() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        setup.sync();
        pg.barrier()?;
        let t0 = Instant::now();
        if let Some(r) = reducer {
            r.prepare(pg)?;
        }
        let loss = setup.model.forward(&x, &y, &t).abs().mean(Kind::Float);
        loss.f_backward().map_err(|e| pg.failure("backward", e))?;
        if reduce_after {
            let g: Vec<Tensor> = setup.params.iter().map(|p| p.grad()).collect();
            pg.allreduce_mean(&g)?;
        }
        setup.sync();
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    let (mut local, mut flat) = (Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let (a, f) = (step(None, false)?, step(None, true)?);
        if i > 0 {
            local.push(a);
            flat.push(f);
        }
    }
    let mut reducer = GradReducer::new(pg, &setup.params)?;
    let mut ddp = Vec::new();
    for i in 0..runs + 2 {
        let d = step(Some(&mut reducer), false)?;
        if i > 1 {
            ddp.push(d);
        }
    }
    setup.report(&format!("forward+backward, batch {b}, no communication"), &local);
    setup.report(&format!("forward+backward, batch {b}, then allreduce_mean"), &flat);
    setup.report(&format!("forward+backward, batch {b}, DDP Reducer"), &ddp);
    Ok(())
}
