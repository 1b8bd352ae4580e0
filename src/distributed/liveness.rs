//! Which rank is gone, when a collective fails. Gloo reports a lost peer by its address
//! ("Connection closed by peer [127.0.0.1]:41234"), not its rank; so every rank bumps a
//! counter of its own in the store from a background thread, and after a failure the ranks
//! whose counters stand still are the lost ones.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::store::Store;

/// How often each rank bumps its counter.
pub const INTERVAL: Duration = Duration::from_millis(500);

fn key(rank: usize) -> String {
    format!("alive/{rank}")
}

/// This rank's heartbeat thread; stops when dropped (or when the store stops answering).
pub struct Heartbeat {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts bumping `alive/<rank>` every [`INTERVAL`] on its own store connection.
    pub fn start(store: Store, rank: usize) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("dit-heartbeat-{rank}"))
            .spawn(move || loop {
                if store.add(&key(rank), 1).is_err() {
                    return; // the store is gone: the failure shows up in the collectives
                }
                match stopped.recv_timeout(INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            })
            .expect("cannot start the heartbeat thread");
        Heartbeat { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the store says about the other ranks after a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// These ranks stopped their heartbeats.
    Lost(Vec<usize>),
    /// Every rank is still beating: the failure is something else (a timeout, a bug).
    AllAlive,
    /// The store itself no longer answers (its host is gone); the message says why.
    StoreGone(String),
}

/// Reads every other rank's counter twice, a few heartbeat intervals apart.
pub fn diagnose(store: &mut Store, me: usize, world_size: usize) -> Verdict {
    // The host may be hung rather than gone: do not wait for it for long.
    let _ = store.set_timeout(Duration::from_secs(5));
    let others: Vec<usize> = (0..world_size).filter(|&r| r != me).collect();
    let read = |store: &Store| -> Result<Vec<i64>, String> {
        others.iter().map(|&r| store.add(&key(r), 0).map_err(|e| e.to_string())).collect()
    };
    let before = match read(store) {
        Ok(v) => v,
        Err(e) => return Verdict::StoreGone(e),
    };
    thread::sleep(INTERVAL * 3);
    let after = match read(store) {
        Ok(v) => v,
        Err(e) => return Verdict::StoreGone(e),
    };
    let lost: Vec<usize> =
        others.iter().zip(before.iter().zip(&after)).filter(|(_, (b, a))| b == a).map(|(&r, _)| r).collect();
    if lost.is_empty() {
        Verdict::AllAlive
    } else {
        Verdict::Lost(lost)
    }
}

/// Says which rank(s) a verdict names, for an error message.
pub fn describe(verdict: &Verdict, store_host_rank: Option<usize>) -> Option<String> {
    let list = |ranks: &[usize]| ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
    match verdict {
        Verdict::Lost(r) if r.len() == 1 => Some(format!("rank {} is lost (its heartbeat stopped)", r[0])),
        Verdict::Lost(r) => Some(format!("ranks {} are lost (their heartbeats stopped)", list(r))),
        Verdict::AllAlive => None,
        Verdict::StoreGone(e) => Some(match store_host_rank {
            Some(host) => {
                format!("rank {host} is lost (it hosted the rendezvous store, which no longer answers: {e})")
            }
            None => format!("torchrun's rendezvous store no longer answers ({e})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_ranks() {
        assert_eq!(
            describe(&Verdict::Lost(vec![1]), Some(0)).unwrap(),
            "rank 1 is lost (its heartbeat stopped)"
        );
        assert!(describe(&Verdict::Lost(vec![1, 3]), None).unwrap().starts_with("ranks 1, 3 are lost"));
        assert!(describe(&Verdict::StoreGone("reset".into()), Some(0))
            .unwrap()
            .starts_with("rank 0 is lost"));
        assert_eq!(describe(&Verdict::AllAlive, Some(0)), None);
    }
}
