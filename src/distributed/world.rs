//! Where this process stands in a torchrun launch, from the environment torchrun sets.

use anyhow::{bail, Result};

/// This process's place in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Global rank, 0 ≤ rank < world_size (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this machine; picks the CUDA device (`LOCAL_RANK`, default `RANK`).
    pub local_rank: usize,
    /// Processes on this machine (`LOCAL_WORLD_SIZE`, default `WORLD_SIZE`).
    pub local_world_size: usize,
    /// Host of the rendezvous store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Its port (`MASTER_PORT`).
    pub master_port: u16,
    /// torchrun hosts the store in its agent and every rank connects to it as a client
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`); otherwise rank 0 hosts it.
    pub agent_store: bool,
    /// How many times torchrun restarted the workers (`TORCHELASTIC_RESTART_COUNT`, default 0);
    /// part of the store's key prefix, so a restarted group never reads a previous attempt's keys.
    pub restart_count: u64,
}

impl World {
    /// The world torchrun describes in the environment, or `None` when this process was not
    /// launched that way (neither `RANK` nor `WORLD_SIZE` is set). A missing or malformed
    /// variable is a one-line error naming it.
    pub fn from_env() -> Result<Option<World>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`World::from_env`], reading variables through `var`.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        if var("RANK").is_none() && var("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let number = |name: &str, default: Option<usize>| -> Result<usize> {
            match (var(name), default) {
                (Some(text), _) => match text.trim().parse::<usize>() {
                    Ok(n) => Ok(n),
                    Err(_) => bail!("{name}={text:?} is not a non-negative integer"),
                },
                (None, Some(d)) => Ok(d),
                (None, None) => bail!("{name} is not set (RANK or WORLD_SIZE is, as torchrun sets them all)"),
            }
        };
        let rank = number("RANK", None)?;
        let world_size = number("WORLD_SIZE", None)?;
        if world_size == 0 {
            bail!("WORLD_SIZE=0: a run needs at least one process");
        }
        if rank >= world_size {
            bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let local_world_size = number("LOCAL_WORLD_SIZE", Some(world_size))?;
        if local_rank >= local_world_size {
            bail!("LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}");
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            Some(_) => bail!("MASTER_ADDR is empty"),
            None => bail!("MASTER_ADDR is not set (RANK or WORLD_SIZE is, as torchrun sets them all)"),
        };
        let master_port = match var("MASTER_PORT") {
            Some(text) => match text.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => bail!("MASTER_PORT={text:?} is not a port number (1-65535)"),
            },
            None => bail!("MASTER_PORT is not set (RANK or WORLD_SIZE is, as torchrun sets them all)"),
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let restart_count = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(text) => match text.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => bail!("TORCHELASTIC_RESTART_COUNT={text:?} is not a non-negative integer"),
            },
            None => 0,
        };
        Ok(Some(World {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
        }))
    }

    /// Whether this process is rank 0, the one that writes files.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_lookup(|name| map.get(name).cloned())
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "0"),
    ];

    #[test]
    fn absent_without_rank_and_world_size() {
        assert_eq!(world(&[("MASTER_PORT", "1234")]).unwrap(), None);
    }

    #[test]
    fn reads_torchrun_variables() {
        let w = world(TORCHRUN).unwrap().unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.local_world_size), (1, 2, 1, 2));
        assert_eq!(
            (w.master_addr.as_str(), w.master_port, w.agent_store, w.restart_count),
            ("127.0.0.1", 29500, true, 0)
        );
        assert!(!w.is_main());
    }

    #[test]
    fn local_values_default_to_global_ones() {
        let vars = [("RANK", "0"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        let w = world(&vars).unwrap().unwrap();
        assert_eq!((w.local_rank, w.local_world_size, w.agent_store), (0, 3, false));
    }

    #[test]
    fn errors_name_the_variable() {
        let with = |name: &str, value: Option<&str>| {
            let mut vars: Vec<(&str, &str)> = TORCHRUN.iter().copied().filter(|(k, _)| *k != name).collect();
            if let Some(v) = value {
                vars.push((name, v));
            }
            let e = world(&vars).unwrap_err().to_string();
            assert!(e.contains(name) && !e.contains('\n'), "{name}: {e}");
        };
        with("RANK", Some("one"));
        with("RANK", Some("2"));
        with("RANK", None);
        with("WORLD_SIZE", Some("-1"));
        with("LOCAL_RANK", Some("x"));
        with("LOCAL_RANK", Some("5"));
        with("MASTER_ADDR", None);
        with("MASTER_PORT", Some("70000"));
        with("MASTER_PORT", Some("0"));
        with("MASTER_PORT", None);
        with("TORCHELASTIC_RESTART_COUNT", Some("?"));
    }
}
