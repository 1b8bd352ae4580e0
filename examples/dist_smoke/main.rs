//! Test helper and demonstration of `dit::distributed`, run under torchrun (an example, so it
//! ships with neither `train` nor `sample`):
//!
//! ```sh
//! .venv/bin/torchrun --no-python --nproc-per-node 2 target/release/examples/dist_smoke
//! ```
//!
//! By default every rank checks the collectives (config check, exact all-reduce means,
//! broadcast, barrier, DDP's Reducer against a plain all-reduce) and prints `rank R: ok ...`
//! lines. `--loop` keeps all-reducing until a rank fails (tests kill one); `--bench` times
//! the all-reduce of the DiT's gradients. tests/distributed.rs drives it. `--device cuda` runs
//! the same on `cuda:LOCAL_RANK` over NCCL (scripts/gpu_check runs it there).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use dit::distributed::{Backend, Options, ProcessGroup, World};
use tch::{Device, Kind, Tensor};

mod bench;
mod checks;

use bench::bench;
use checks::{check_allreduce, check_broadcast, check_reducer};

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

pub(crate) fn say(rank: usize, msg: &str) {
    use std::io::Write;
    println!("rank {rank}: {msg}");
    let _ = std::io::stdout().flush();
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
