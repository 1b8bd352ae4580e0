//! dit::distributed across real processes, through the `dist_smoke` test helper
//! (src/bin/dist_smoke.rs): the collectives under torchrun, and the failures: a config that
//! differs between ranks, a rank killed or exiting, the store's host lost, a wrong port, a
//! missing peer. The fault tests start the two ranks themselves, with torchrun's variables,
//! because torchrun answers a failed worker by terminating the others at once, which would
//! hide what the survivors report; one test checks torchrun's own teardown.
//! Every wait is for a line, or a process exit, under a deadline; none is a fixed sleep.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const SMOKE: &str = env!("CARGO_BIN_EXE_dist_smoke");

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
        let mut child = Command::new(SMOKE)
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
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
    let torchrun = common::root().join(".venv/bin/torchrun");
    assert!(torchrun.exists(), "{} is missing: run scripts/setup", torchrun.display());
    let start = Instant::now();
    let port = free_port().to_string();
    let out = Command::new(torchrun)
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
            SMOKE,
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text, start.elapsed())
}

#[test]
fn collectives_under_torchrun() {
    let (status, out, _) = torchrun(&[]);
    assert!(status.success(), "{out}");
    for r in 0..2 {
        for line in [
            "joined a group of 2 (gloo)",
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
