//! Under torchrun, which process writes each latent store: exactly one per store path. The
//! first process of each machine (local rank 0) leaves a probe file beside the store's path
//! and all processes gather the probes' tokens; a machine that sees the probe of a machine of
//! lower rank shares that machine's folder (and data), and leaves the writing to it. Machines
//! with folders of their own each write theirs. Encoding is collective (every process encodes
//! its share), so it happens when some writer lacks its store and not otherwise: a machine
//! that already has a whole store helps the others rather than waiting on them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Plan;
use crate::distributed::ProcessGroup;
use crate::fs::TEMP_PREFIX;

/// The plan of this process for the store at `path`; `whole` says whether a whole store of
/// the run's key is there.
pub(crate) fn elect(pg: &ProcessGroup, path: &Path, whole: impl Fn(&Path) -> bool) -> Result<Plan> {
    let leader = pg.world().local_rank == 0;
    let (mut token, mut have) = (0u64, false);
    let mine = match leader {
        true => Probe::create(path).map(|p| {
            (token, have) = (p.token, whole(path));
            Some(p)
        }),
        false => Ok(None),
    };
    let all = pg.allgather_u64(&[token, u64::from(have), u64::from(mine.is_err())])?;
    let mine = mine?;
    if all.iter().any(|v| v[2] != 0) {
        bail!("preparing the latent store failed on another process (see its messages)");
    }
    let shares_with_lower =
        |rank: usize| all[..rank].iter().any(|v| v[0] != 0 && probe_path(path, v[0]).exists());
    let writer = leader && !shares_with_lower(pg.rank());
    let encode = pg.any(writer && !have)?;
    drop(mine); // every process has looked: the probe can go
    Ok(Plan { write: writer && !have, encode })
}

/// The probe file of `token` beside the store `path`.
fn probe_path(path: &Path, token: u64) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::fs::parent(path).join(format!("{TEMP_PREFIX}probe-{token:016x}-{name}"))
}

/// A probe file, removed when dropped.
struct Probe {
    token: u64,
    path: PathBuf,
}

impl Probe {
    fn create(store: &Path) -> Result<Self> {
        let token = crate::fs::random() | 1;
        let path = probe_path(store, token);
        let dir = crate::fs::parent(&path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the folder {}", dir.display()))?;
        std::fs::write(&path, b"").map_err(|e| crate::fs::explain(&path, e.into(), 0))?;
        Ok(Self { token, path })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
