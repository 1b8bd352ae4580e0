//! dit::distributed across real processes. First through the `dist_smoke` test helper
//! (examples/dist_smoke/): the collectives under torchrun, and the failures: a config that
//! differs between ranks, a rank killed or exiting, the store's host lost, a wrong port, a
//! missing peer. Then data-parallel training with the `train` binary: 2 processes × batch b
//! against 1 × 2b, resuming (in 2 processes, and from 2 to 1), a rank killed, a config that
//! differs, SIGTERM on one rank.
//!
//! The fault tests start the two ranks themselves, with torchrun's variables, because torchrun
//! answers a failed worker by terminating the others at once, which would hide what the
//! survivors report; one test checks torchrun's own teardown. Every wait is for a line, or a
//! process exit, under a deadline; none is a fixed sleep.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The `dist_smoke` example, which `cargo test` builds beside the binaries.
fn smoke() -> std::path::PathBuf {
    Path::new(TRAIN).parent().unwrap().join("examples/dist_smoke")
}

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One running rank: its stdout lines arrive on a channel; stderr is collected at exit.
struct Rank {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Rank {
    fn start(rank: usize, world: usize, port: u16, args: &[&str]) -> Rank {
        Rank::spawn(Command::new(smoke()).args(args), rank, world, port)
    }

    /// `train` as rank `rank`, in `dir`.
    fn train(dir: &Path, rank: usize, world: usize, port: u16, args: &[&str]) -> Rank {
        Rank::spawn(
            Command::new(TRAIN).current_dir(dir).args(args).env("OMP_NUM_THREADS", "1"),
            rank,
            world,
            port,
        )
    }

    /// `train` in `dir` as rank `rank` alone on its machine (local rank 0 of 1), as on a
    /// cluster of one process per machine.
    fn machine(dir: &Path, rank: usize, world: usize, port: u16, args: &[String]) -> Rank {
        let mut command = Command::new(TRAIN);
        command.current_dir(dir).args(args).env("OMP_NUM_THREADS", "1");
        command.env("LOCAL_RANK", "0").env("LOCAL_WORLD_SIZE", "1");
        Rank::spawn(&mut command, rank, world, port)
    }

    /// Spawns `command` as rank `rank` of `world` (on one machine, unless the command sets
    /// `LOCAL_RANK` itself).
    fn spawn(command: &mut Command, rank: usize, world: usize, port: u16) -> Rank {
        if !command.get_envs().any(|(k, _)| k == "LOCAL_RANK") {
            command.env("LOCAL_RANK", rank.to_string()).env("LOCAL_WORLD_SIZE", world.to_string());
        }
        let mut child = command
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Rank { child, lines, seen: Vec::new() }
    }

    /// Waits (up to `limit`) for a stdout line containing `text`.
    fn wait_for_line(&mut self, text: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(text);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {text:?} within {limit:?}; got {:?}", self.seen);
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
    }

    /// Waits (up to `limit`) for the exit; returns the status, all stdout lines and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String, Duration) {
        let start = Instant::now();
        let mut stderr = self.child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let pid = self.child.id();
        let mut child = self.child;
        thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            let _ = tx.send((child.wait().unwrap(), err));
        });
        let (status, err) = rx.recv_timeout(limit).unwrap_or_else(|_| {
            // SAFETY: pid is our child's, still unreaped (the waiting thread has not returned).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("rank did not exit within {limit:?}; stdout so far {:?}", self.seen)
        });
        let took = start.elapsed();
        let mut out = self.seen;
        out.extend(self.lines.try_iter());
        (status, out.join("\n"), err, took)
    }
}

/// The last line of a rank's stderr that it printed itself (libtorch logs warnings there too).
fn own_error(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| l.contains(": error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

fn torchrun(args: &[&str]) -> (ExitStatus, String, Duration) {
    let start = Instant::now();
    let out = torchrun_command(smoke()).args(args).output().unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text, start.elapsed())
}

/// torchrun starting two copies of `program` on this machine, on a free port.
fn torchrun_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let torchrun = common::root().join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} is missing: run scripts/setup", torchrun.display());
    let port = free_port().to_string();
    let mut command = Command::new(torchrun);
    command.args([
        "--no-python",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        &port,
    ]);
    command.arg(program);
    command
}

#[test]
fn collectives_under_torchrun() {
    let (status, out, _) = torchrun(&[]);
    assert!(status.success(), "{out}");
    for r in 0..2 {
        for line in [
            "joined a group of 2 (gloo on Cpu)",
            "ok check_same",
            // (1 + 2) / 2, (1.25 + 2.25) / 2, ...: float sums that are exact.
            "ok allreduce_mean [1.5, 1.75, 2.0]",
            "ok allreduce_max",
            "ok broadcast from 0 [0, 0, 0]",
            "ok broadcast from 1 [1, 1, 1]",
            "ok barrier",
            "ok any",
            "ok reducer",
            "all checks passed",
        ] {
            assert!(out.contains(&format!("rank {r}: {line}")), "rank {r} did not print {line:?}:\n{out}");
        }
    }
}

#[test]
fn torchrun_fails_fast_when_a_rank_exits() {
    let (status, out, took) = torchrun(&["--loop", "--exit-rank", "1", "--exit-after", "5"]);
    assert!(!status.success(), "{out}");
    assert!(took < Duration::from_secs(60), "torchrun took {took:?}");
    assert!(out.contains("rank 1: exiting on purpose"), "{out}");
}

#[test]
fn mismatched_config_fails_on_every_rank_naming_the_rank() {
    let port = free_port();
    let ranks: Vec<Rank> = (0..2).map(|r| Rank::start(r, 2, port, &["--differ-on-rank", "1"])).collect();
    for (r, rank) in ranks.into_iter().enumerate() {
        let (status, _, err, _) = rank.finish(Duration::from_secs(60));
        assert!(!status.success());
        let line = own_error(&err);
        assert!(
            line.contains(&format!(
                "rank {r}: error: the config differs across ranks: rank 1 differs from rank 0"
            )),
            "{line}"
        );
    }
}

/// Rank `victim` is stopped (SIGKILL, or its own exit with code 3) while both all-reduce in
/// a loop; the survivor must fail within 60 s and name it.
fn lost_rank(victim: usize, kill: bool) {
    let port = free_port();
    let exit_args: Vec<String> = if kill { vec![] } else { vec!["--exit-rank".into(), victim.to_string()] };
    let mut ranks: Vec<Rank> = (0..2)
        .map(|r| {
            let mut args = vec!["--loop", "--timeout", "30"];
            args.extend(exit_args.iter().map(String::as_str));
            Rank::start(r, 2, port, &args)
        })
        .collect();
    for rank in &mut ranks {
        rank.wait_for_line("looping", Duration::from_secs(60));
    }
    let survivor = ranks.remove(1 - victim);
    let mut gone = ranks.pop().unwrap();
    if kill {
        gone.kill();
    }
    let (status, _, _, _) = gone.finish(Duration::from_secs(60));
    if !kill {
        assert_eq!(status.code(), Some(3));
    }
    let (status, _, err, took) = survivor.finish(Duration::from_secs(60));
    assert!(!status.success());
    assert!(took < Duration::from_secs(60), "the survivor took {took:?}");
    let line = own_error(&err);
    let survivor_rank = 1 - victim;
    assert!(
        line.contains(&format!("rank {survivor_rank} of 2: all-reduce (mean) failed: rank {victim} is lost")),
        "{line}"
    );
}

#[test]
fn killed_rank_is_named_by_the_survivor() {
    lost_rank(1, true);
}

#[test]
fn rank_exiting_with_a_code_is_named_by_the_survivor() {
    lost_rank(1, false);
}

#[test]
fn killed_store_host_is_named_by_the_survivor() {
    lost_rank(0, true);
}

#[test]
fn a_hung_rank_fails_the_others_after_the_timeout() {
    // SIGSTOP: the peer's connections stay open, so only the collective timeout (5 s here)
    // can end the wait; its heartbeat stops too, so it is named.
    let port = free_port();
    let mut ranks: Vec<Rank> =
        (0..2).map(|r| Rank::start(r, 2, port, &["--loop", "--timeout", "5"])).collect();
    for rank in &mut ranks {
        rank.wait_for_line("looping", Duration::from_secs(60));
    }
    let mut hung = ranks.pop().unwrap();
    // SAFETY: the child is running and not yet waited for.
    unsafe { libc::kill(hung.child.id() as i32, libc::SIGSTOP) };
    let (status, _, err, took) = ranks.pop().unwrap().finish(Duration::from_secs(60));
    hung.kill();
    hung.finish(Duration::from_secs(60));
    assert!(!status.success());
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(30), "took {took:?}");
    assert!(own_error(&err).contains("rank 0 of 2: all-reduce (mean) failed: rank 1 is lost"), "{err}");
}

#[test]
fn wrong_port_is_a_bounded_error() {
    // Rank 1 alone: nobody listens on the port.
    let rank = Rank::start(1, 2, free_port(), &["--connect-timeout", "3"]);
    let (status, _, err, took) = rank.finish(Duration::from_secs(30));
    assert!(!status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(own_error(&err).contains("could not reach the rendezvous store at 127.0.0.1:"), "{err}");
}

#[test]
fn missing_peer_is_a_bounded_error() {
    // Rank 0 alone hosts the store and waits for rank 1, which never comes.
    let rank = Rank::start(0, 2, free_port(), &["--connect-timeout", "3"]);
    let (status, _, err, took) = rank.finish(Duration::from_secs(30));
    assert!(!status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(own_error(&err).contains("but not all 2 ranks connected within 3 s"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Data-parallel training.

/// 10 images, so that a global batch of 8 leaves a last batch of 2: with 2 processes × 4,
/// rank 0 takes both and rank 1 none. Label dropout exercises the third random draw.
const DP_CONFIG: &str = r#"{
  "model": {"img_size": 16, "patch_size": 4, "dit_num": 1, "head": 2, "emb_size": 16},
  "diffusion": {"max_t": 100},
  "train": {"batch_size": 4, "lr": 0.001, "num_workers": 1, "data_path": "data", "epoch": 2,
            "ema_decay": 0.9, "lr_schedule": "cosine", "warmup_steps": 1, "cfg_dropout": 0.25,
            "histogram_every": 2, "preview": {"every_epochs": 0}}
}"#;

fn dp_dir() -> tempfile::TempDir {
    dp_dir_of(10)
}

/// The data-parallel setting with `n` images.
fn dp_dir_of(n: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16 + i * 7) as u8, (y * 16 + i * 13) as u8, ((x + y) * 8 + i * 29) as u8])
        });
        img.save(dir.path().join(format!("data/{i:02}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("dp.json"), DP_CONFIG).unwrap();
    dir
}

fn dp_args(name: &str, extra: &[&str]) -> Vec<String> {
    let (checkpoint, logdir) = (format!("{name}/w.safetensors"), format!("{name}/logs"));
    let base = [
        "--config",
        "dp.json",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--checkpoint",
        &checkpoint,
        "--logdir",
        &logdir,
    ];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn ok(out: Output) -> String {
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// One process, on one thread as torchrun gives each worker.
fn train_one(dir: &Path, name: &str, extra: &[&str]) -> String {
    ok(Command::new(TRAIN)
        .current_dir(dir)
        .args(dp_args(name, extra))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap())
}

fn train_two(dir: &Path, name: &str, extra: &[&str]) -> String {
    ok(torchrun_command(TRAIN).current_dir(dir).args(dp_args(name, extra)).output().unwrap())
}

type State = dit::checkpoint::state::TrainState;

fn state(dir: &Path, name: &str) -> State {
    dit::checkpoint::state::load(&dir.join(format!("{name}/w.safetensors.state.safetensors"))).unwrap()
}

/// The weights and the EMA agree within 1e-5 relative, Adam's moments within 5e-5: they are
/// sums of raw gradients, which a different split of the batch (other matrix shapes, another
/// summation order) moves by about 1e-5 relative after a few steps; so does merely running one
/// process on 2 threads instead of 1 (measured: up to 1.7e-5 in the moments, 3e-6 in the
/// weights). Left out: the attention key bias, whose exact gradient is zero (softmax ignores a
/// shift of all the logits of a row), so that what a step computes for it is rounding noise,
/// which Adam's normalisation turns into full-size updates in any two runs that round
/// differently.
fn assert_close(a: &State, b: &State) {
    for (group, limit) in [("model", 1e-5), ("ema", 1e-5), ("adam_m", 5e-5), ("adam_v", 5e-5)] {
        let (ga, gb) = (a.group(group).unwrap(), b.group(group).unwrap());
        assert_eq!(ga.len(), gb.len());
        for (name, ta) in ga {
            if name.ends_with("k_emb.bias") {
                continue;
            }
            let d = common::rel_diff(ta, &gb[name]);
            assert!(d <= limit, "{group}.{name}: relative difference {d:e} > {limit:e}");
        }
    }
}

fn assert_identical(a: &State, b: &State) {
    for group in ["model", "ema", "adam_m", "adam_v"] {
        for (name, ta) in a.group(group).unwrap() {
            assert!(ta.equal(&b.group(group).unwrap()[name]), "{group}.{name} differs");
        }
    }
}

#[test]
fn two_processes_train_as_one_with_twice_the_batch() {
    let dir = dp_dir();
    let d = dir.path();
    // 2 epochs of a batch of 8 and one of 2: 4 steps.
    train_one(d, "one", &["--batch-size", "8"]);
    let out = train_two(d, "two", &[]);
    assert!(out.contains("data parallel: 2 processes × batch 4 = 8 images per step"), "{out}");
    let (one, two) = (state(d, "one"), state(d, "two"));
    assert_eq!((two.meta.step, two.meta.epoch, two.meta.world_size), (4, 2, 2));
    assert_eq!((one.meta.step, one.meta.epoch, one.meta.world_size), (4, 2, 1));
    assert_close(&one, &two);
}

#[test]
fn two_processes_of_two_micro_batches_of_4_train_as_one_batch_of_16() {
    // 20 images: per epoch a step of 16 and a short one of 4 (on rank 0 alone); 2 epochs.
    let dir = dp_dir_of(20);
    let d = dir.path();
    train_one(d, "one", &["--batch-size", "16"]);
    let out = train_two(d, "two", &["--grad-accum-steps", "2"]);
    assert!(out.contains("data parallel: 2 processes × 2 micro-batches of 4 = 16 images per step"), "{out}");
    let (one, two) = (state(d, "one"), state(d, "two"));
    assert_eq!((two.meta.step, two.meta.epoch), (4, 2));
    assert_close(&one, &two);
}

#[test]
fn resuming_with_two_processes_continues_exactly() {
    let dir = dp_dir();
    let d = dir.path();
    train_two(d, "straight", &[]);
    train_two(d, "resumed", &["--max-steps", "1"]);
    let out = train_two(d, "resumed", &[]);
    assert!(out.contains("resuming from") && out.contains("at step 1 (epoch 1, batch 1)"), "{out}");
    assert_identical(&state(d, "straight"), &state(d, "resumed"));
}

#[test]
fn resuming_from_two_processes_to_one() {
    let dir = dp_dir();
    let d = dir.path();
    train_one(d, "straight", &["--batch-size", "8"]);
    train_two(d, "resumed", &["--max-steps", "1"]);
    let out = train_one(d, "resumed", &["--batch-size", "8"]);
    assert!(out.contains("at step 1 (epoch 1, batch 1)"), "{out}");
    let (straight, resumed) = (state(d, "straight"), state(d, "resumed"));
    assert_eq!((resumed.meta.step, resumed.meta.world_size), (4, 1));
    assert_close(&straight, &resumed);
}

/// The two ranks of a long run, started without torchrun (see the module documentation).
fn long_run(d: &Path, rank1_extra: &[&str]) -> [Rank; 2] {
    let port = free_port();
    let long = ["--epochs", "100000"];
    let args0 = dp_args("run", &long);
    let args1 = [dp_args("run", &long), rank1_extra.iter().map(|s| s.to_string()).collect()].concat();
    let a0: Vec<&str> = args0.iter().map(String::as_str).collect();
    let a1: Vec<&str> = args1.iter().map(String::as_str).collect();
    [Rank::train(d, 0, 2, port, &a0), Rank::train(d, 1, 2, port, &a1)]
}

#[test]
fn a_killed_rank_stops_training_with_an_error_naming_it() {
    let dir = dp_dir();
    let [mut r0, mut r1] = long_run(dir.path(), &[]);
    r0.wait_for_line("epoch 1/100000: mean loss", Duration::from_secs(60));
    r1.kill();
    r1.finish(Duration::from_secs(60));
    let (status, _, err, took) = r0.finish(Duration::from_secs(60));
    assert!(!status.success());
    assert!(took < Duration::from_secs(60), "rank 0 took {took:?}");
    let line = err.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("rank 0 of 2: ") && line.contains(" failed: rank 1 is lost"), "{line}");
}

#[test]
fn a_config_that_differs_across_ranks_is_an_error_on_every_rank() {
    let dir = dp_dir();
    let [r0, r1] = long_run(dir.path(), &["--lr", "0.002"]);
    for rank in [r0, r1] {
        let (status, _, err, _) = rank.finish(Duration::from_secs(60));
        assert!(!status.success());
        let want =
            "the resolved config (config file and flags) differs across ranks: rank 1 differs from rank 0";
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn sigterm_on_one_rank_stops_all_at_the_same_step_and_rank_0_saves() {
    let dir = dp_dir();
    let d = dir.path();
    let [mut r0, r1] = long_run(d, &[]);
    r0.wait_for_line("epoch 1/100000: mean loss", Duration::from_secs(60));
    // SAFETY: r1's child is running and not yet waited for.
    unsafe { libc::kill(r1.child.id() as i32, libc::SIGTERM) };
    let (status1, _, err1, _) = r1.finish(Duration::from_secs(60));
    let (status0, out0, err0, _) = r0.finish(Duration::from_secs(60));
    assert!(status0.success() && status1.success(), "{err0}\n{err1}");
    let line =
        out0.lines().find(|l| l.starts_with("interrupted at step ")).unwrap_or_else(|| panic!("{out0}"));
    let step: i64 = line["interrupted at step ".len()..].split(':').next().unwrap().parse().unwrap();
    assert_eq!(state(d, "run").meta.step, step);
}

#[test]
fn resuming_with_another_global_batch_goes_on_from_the_same_image() {
    let dir = dp_dir();
    let d = dir.path();
    // 1 step of 2 × 4 images = 2 batches of 4 for one process.
    train_two(d, "run", &["--max-steps", "1"]);
    let out = train_one(d, "run", &["--max-steps", "2"]);
    assert!(out.contains("at step 1 (epoch 1, batch 2)"), "{out}");
    // Batches of 4 of 10 images: 4, 4, 2; the step after the first 8 images ends the epoch.
    let m = state(d, "run").meta;
    assert_eq!((m.step, m.epoch, m.batch_in_epoch, m.world_size), (2, 1, 0, 1));
}

/// In latent space each of two processes encodes its half of the images; the machine's one
/// store is the store one process writes alone, byte for byte, and both train on it.
#[test]
fn two_processes_encode_the_latent_store_one_process_encodes_and_train_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    latent_dir(d);
    let extra = ["--autoencoder-dir", "ae", "--max-steps", "2"];
    let one = train_one(d, "one", &extra);
    assert!(one.contains("latents: encoding 8 images"), "{one}");
    let two = train_two(d, "two", &extra);
    assert!(two.contains("latents: encoding 8 images"), "{two}");
    assert!(two.contains("reached --max-steps at step 2"), "{two}");
    assert!(store_bytes(d, "one") == store_bytes(d, "two"), "the stores differ");
    assert_eq!(state(d, "two").meta.latent, state(d, "one").meta.latent);
}

/// The latent setting in `dir`: 8 images of 64², taesd, and `dp.json` (batch 2, flips).
fn latent_dir(dir: &Path) {
    common::latent_images(dir);
    common::autoencoder(dir, 11);
    let latent = r#"{"model": {"img_size": 64, "patch_size": 2, "autoencoder": "taesd"},
                     "train": {"batch_size": 2, "hflip": true, "data_path": "imgs"}}"#;
    common::write_tiny_config(dir, "dp.json", &[latent]);
}

/// Two machines' processes (each local rank 0 of 1) started together in `dirs` (one each).
fn two_machines(dirs: [&Path; 2], extra: &[&str]) -> [String; 2] {
    let port = free_port();
    let args = dp_args("run", extra);
    let ranks = [Rank::machine(dirs[0], 0, 2, port, &args), Rank::machine(dirs[1], 1, 2, port, &args)];
    ranks.map(|r| {
        let (status, out, err, _) = r.finish(Duration::from_secs(300));
        assert!(status.success(), "{out}\n{err}");
        out
    })
}

/// The bytes of the one latent store of the run `name` in `d`.
fn store_bytes(d: &Path, name: &str) -> Vec<u8> {
    let files: Vec<_> =
        std::fs::read_dir(d.join(name).join("latents")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read(&files[0]).unwrap()
}

/// The latents of a store, image by image (its metadata left out: it names the files).
fn store_latents(dir: &Path) -> Vec<Vec<u8>> {
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let store = dit::data::LatentStore::open(&files[0]).unwrap();
    (0..8).flat_map(|i| [false, true].map(|f| store.item(i, f).unwrap().to_vec())).collect()
}

/// Two machines sharing one folder elect one writer of their one store; both train.
#[test]
fn two_machines_on_one_shared_folder_write_one_store_and_both_train() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    latent_dir(d);
    let extra = ["--autoencoder-dir", "ae", "--max-steps", "2"];
    let one = train_one(d, "one", &extra);
    assert!(one.contains("latents: encoding 8 images"), "{one}");
    let [a, _] = two_machines([d, d], &extra);
    assert!(a.contains("latents: encoding 8 images") && a.contains("reached --max-steps at step 2"), "{a}");
    assert!(store_bytes(d, "one") == store_bytes(d, "run"), "the store differs from one process's");
    assert_eq!(state(d, "run").meta.world_size, 2);
}

/// Machines with folders of their own each write theirs; one that already has its store
/// does not hold the other up, and the other's store is the same latents.
#[test]
fn two_machines_with_their_own_folders_each_write_their_store_even_when_one_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let (m0, m1) = (dir.path().join("m0"), dir.path().join("m1"));
    for m in [&m0, &m1] {
        std::fs::create_dir_all(m).unwrap();
        latent_dir(m);
    }
    let extra = ["--autoencoder-dir", "ae", "--max-steps", "2"];
    // m0 has its store (from a run whose checkpoint is then removed); m1 has none.
    train_one(&m0, "run", &["--autoencoder-dir", "ae", "--max-steps", "1"]);
    for f in ["run/w.safetensors", "run/w.safetensors.state.safetensors"] {
        std::fs::remove_file(m0.join(f)).unwrap();
    }
    let [a, _] = two_machines([&m0, &m1], &extra);
    assert!(a.contains("reached --max-steps at step 2"), "{a}");
    assert!(store_latents(&m0.join("run/latents")) == store_latents(&m1.join("run/latents")));
}
