//! The process group: c10d's Gloo or NCCL backend over the rendezvous store, with the
//! collectives data-parallel training needs.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::ptr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tch::{Device, Tensor};

use super::ffi;
use super::liveness::{self, Heartbeat};
use super::store::{millis, Store};
use super::{Backend, World};

/// Timeouts and bucket size of a [`ProcessGroup`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How long connecting to the store, and the host's wait for all ranks, may take.
    pub connect_timeout: Duration,
    /// How long one collective may wait for a peer (a peer that dies fails it at once). The
    /// default, 50 s, plus the 1.5 s it takes to name a lost rank, keeps a hung peer's error
    /// within a minute.
    pub timeout: Duration,
    /// Largest flat buffer one all-reduce or broadcast sends (DDP's default: 25 MB).
    pub bucket_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(50),
            bucket_bytes: 25 << 20,
        }
    }
}

/// A c10d process group joined by every rank of a [`World`].
///
/// Every rank must make the same calls in the same order. After a failed collective the
/// group is broken: later calls fail at once, and dropping it leaves its threads to process
/// exit rather than wait on a dead peer.
pub struct ProcessGroup {
    raw: *mut ffi::DitPg,
    world: World,
    backend: Backend,
    device: Device,
    options: Options,
    store: RefCell<Store>,
    heartbeat: Option<Heartbeat>,
    broken: Cell<bool>,
}

// SAFETY: c10d process groups may be used from any thread; this handle is used by one
// thread at a time (it is not Sync) and may move between threads.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group: connects to the store (rank 0 hosts it unless torchrun's agent does),
    /// then builds the backend, which connects every pair of ranks. Tensors given to the
    /// collectives must live on `device` (the CPU for Gloo, `cuda:local_rank` for NCCL).
    pub fn new(world: &World, backend: Backend, device: Device, options: Options) -> Result<ProcessGroup> {
        backend.check(device)?;
        let cuda_index = match device {
            Device::Cuda(i) => i as i32,
            _ => -1,
        };
        let mut store = Store::connect(world, options.connect_timeout)?;
        // The backend's own rendezvous (every rank publishing its address) waits on the
        // store: bound it by the connect timeout too.
        store.set_timeout(options.connect_timeout)?;
        let mut raw = ptr::null_mut();
        ffi::call(|err, len| unsafe {
            ffi::dit_pg_new(
                store.raw(),
                world.rank as i32,
                world.world_size as i32,
                backend.code(),
                cuda_index,
                millis(options.timeout),
                &mut raw,
                err,
                len,
            )
        })
        .map_err(|e| {
            anyhow!(
                "rank {} of {}: cannot create the {backend} process group: {e}",
                world.rank,
                world.world_size
            )
        })?;
        store.set_timeout(options.timeout)?;
        let heartbeat = Heartbeat::start(store.try_clone()?, world.rank);
        Ok(ProcessGroup {
            raw,
            world: world.clone(),
            backend,
            device,
            options,
            store: RefCell::new(store),
            heartbeat: Some(heartbeat),
            broken: Cell::new(false),
        })
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    pub fn world_size(&self) -> usize {
        self.world.world_size
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Replaces every tensor by its mean over the ranks, in place (floating-point tensors).
    pub fn allreduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        self.allreduce(tensors, 0, "all-reduce (mean)")
    }

    /// Replaces every tensor by its element-wise maximum over the ranks, in place.
    pub fn allreduce_max(&self, tensors: &[Tensor]) -> Result<()> {
        self.allreduce(tensors, 1, "all-reduce (max)")
    }

    fn allreduce(&self, tensors: &[Tensor], op: i32, what: &str) -> Result<()> {
        self.usable(what)?;
        let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        let r = ffi::call(|err, len| unsafe {
            ffi::dit_pg_allreduce(
                self.raw,
                ptrs.as_ptr(),
                ptrs.len(),
                op,
                self.options.bucket_bytes as i64,
                0,
                err,
                len,
            )
        });
        self.checked(what, r)
    }

    /// Copies rank `root`'s tensors into every other rank's, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let what = "broadcast";
        self.usable(what)?;
        if root >= self.world.world_size {
            bail!("broadcast from rank {root}, but the world has {} ranks", self.world.world_size);
        }
        let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
        let r = ffi::call(|err, len| unsafe {
            ffi::dit_pg_broadcast(
                self.raw,
                ptrs.as_ptr(),
                ptrs.len(),
                root as i32,
                self.options.bucket_bytes as i64,
                0,
                err,
                len,
            )
        });
        self.checked(what, r)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.barrier_within(self.options.timeout)
    }

    /// A barrier with its own timeout, for waits longer than one collective's (e.g. while
    /// rank 0 alone writes a checkpoint or draws a preview).
    pub fn barrier_within(&self, timeout: Duration) -> Result<()> {
        let what = "barrier";
        self.usable(what)?;
        let r = ffi::call(|err, len| unsafe { ffi::dit_pg_barrier(self.raw, millis(timeout), err, len) });
        self.checked(what, r)
    }

    /// Every rank's `values` (all ranks give the same count), indexed by rank.
    pub fn allgather_u64(&self, values: &[u64]) -> Result<Vec<Vec<u64>>> {
        let what = "all-gather";
        self.usable(what)?;
        let n = values.len();
        let mut out = vec![0u64; n * self.world.world_size];
        let r = ffi::call(|err, len| unsafe {
            ffi::dit_pg_allgather_u64(self.raw, values.as_ptr(), n, out.as_mut_ptr(), 0, err, len)
        });
        self.checked(what, r)?;
        Ok(out.chunks(n.max(1)).map(|c| c.to_vec()).take(self.world.world_size).collect())
    }

    /// Whether any rank passed `true` (e.g. a stop request that reached only some ranks).
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.allgather_u64(&[u64::from(flag)])?.iter().any(|v| v[0] != 0))
    }

    /// Fails, on every rank alike, unless all ranks passed the same bytes (e.g. the resolved
    /// config): the error names `what` and each rank that disagrees with rank 0.
    pub fn check_same(&self, what: &str, bytes: &[u8]) -> Result<()> {
        let mine = [fnv1a(bytes), bytes.len() as u64];
        let all = self.allgather_u64(&mine)?;
        let odd: Vec<usize> = (1..all.len()).filter(|&r| all[r] != all[0]).collect();
        if odd.is_empty() {
            return Ok(());
        }
        let ranks = odd.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
        let (s, verb) = if odd.len() == 1 { ("", "differs") } else { ("s", "differ") };
        bail!(
            "{what} differs across ranks: rank{s} {ranks} {verb} from rank 0 ({} bytes, hash {:016x} on rank 0; \
             {} bytes, hash {:016x} on rank {})",
            all[0][1],
            all[0][0],
            all[odd[0]][1],
            all[odd[0]][0],
            odd[0]
        )
    }

    /// Turns a failed collective (or a backward pass whose gradient hooks failed) into an
    /// error that names the lost rank(s) when the store can tell, and marks the group broken.
    pub fn failure(&self, what: &str, err: impl Display) -> anyhow::Error {
        self.broken.set(true);
        // This rank keeps its heartbeat: it is alive, and the others judge it by that.
        let verdict =
            liveness::diagnose(&mut self.store.borrow_mut(), self.world.rank, self.world.world_size);
        let host = (!self.world.agent_store).then_some(0);
        let me = format!("rank {} of {}", self.world.rank, self.world.world_size);
        match liveness::describe(&verdict, host) {
            Some(who) => anyhow!("{me}: {what} failed: {who}: {err}"),
            None => anyhow!("{me}: {what} failed: {err}"),
        }
    }

    fn usable(&self, what: &str) -> Result<()> {
        if self.broken.get() {
            bail!("rank {}: {what} on a process group that already failed", self.world.rank);
        }
        Ok(())
    }

    fn checked(&self, what: &str, r: std::result::Result<(), String>) -> Result<()> {
        r.map_err(|e| self.failure(what, e))
    }

    pub(crate) fn raw(&self) -> *mut ffi::DitPg {
        self.raw
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        drop(self.heartbeat.take());
        // SAFETY: raw came from dit_pg_new and is released once.
        unsafe {
            if self.broken.get() {
                ffi::dit_pg_leak(self.raw)
            } else {
                ffi::dit_pg_free(self.raw)
            }
        }
    }
}

/// 64-bit FNV-1a: a short fingerprint of bytes for [`ProcessGroup::check_same`].
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
