//! The rendezvous store: c10d's TCPStore, with every key under this run's prefix.

use std::ffi::CString;
use std::ptr;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::ffi;
use super::World;

/// One connection to the TCPStore (rank 0, or torchrun's agent, hosts the server).
pub struct Store {
    raw: *mut ffi::DitStore,
}

// SAFETY: a c10d TCPStore client serialises its own operations; the handle is used by one
// thread at a time through `&self`/`&mut self` here, and moved, never shared, across threads.
unsafe impl Send for Store {}

impl Store {
    /// Connects to the store `world` names, or hosts it on rank 0 when torchrun does not.
    /// Every rank counts itself in; the host then waits until all have. Connecting, and that
    /// wait, give up after `timeout`.
    pub fn connect(world: &World, timeout: Duration) -> Result<Store> {
        let host = CString::new(world.master_addr.as_str())
            .map_err(|_| anyhow!("MASTER_ADDR contains a NUL byte"))?;
        let prefix = CString::new(format!("dit/{}", world.restart_count)).expect("no NUL");
        let is_server = world.rank == 0 && !world.agent_store;
        let mut raw = ptr::null_mut();
        ffi::call(|err, len| unsafe {
            ffi::dit_store_new(
                host.as_ptr(),
                i32::from(world.master_port),
                i32::from(is_server),
                world.world_size as i32,
                1,
                millis(timeout),
                prefix.as_ptr(),
                &mut raw,
                err,
                len,
            )
        })
        .map_err(|e| {
            let at = format!("{}:{}", world.master_addr, world.master_port);
            let secs = timeout.as_secs_f64();
            if is_server {
                anyhow!(
                    "rank 0 hosted the rendezvous store at {at} but not all {} ranks connected within {secs:.0} s \
                     (is every rank started, with the same MASTER_ADDR/MASTER_PORT?): {e}",
                    world.world_size
                )
            } else {
                anyhow!(
                    "rank {} could not reach the rendezvous store at {at} (MASTER_ADDR/MASTER_PORT) within \
                     {secs:.0} s: {e}",
                    world.rank
                )
            }
        })?;
        Ok(Store { raw })
    }

    /// A second connection to the same store, for another thread.
    pub fn try_clone(&self) -> Result<Store> {
        let mut raw = ptr::null_mut();
        ffi::call(|err, len| unsafe { ffi::dit_store_clone(self.raw, &mut raw, err, len) })
            .map_err(|e| anyhow!("cannot open a second connection to the rendezvous store: {e}"))?;
        Ok(Store { raw })
    }

    /// How long later operations (waits included) may take before they fail.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        ffi::call(|err, len| unsafe { ffi::dit_store_set_timeout(self.raw, millis(timeout), err, len) })
            .map_err(|e| anyhow!("rendezvous store: {e}"))
    }

    /// Atomically adds `delta` to the counter `key` (0 when new) and returns its new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = CString::new(key).map_err(|_| anyhow!("store key {key:?} contains a NUL byte"))?;
        let mut value = 0;
        ffi::call(|err, len| unsafe {
            ffi::dit_store_add(self.raw, key.as_ptr(), delta, &mut value, err, len)
        })
        .map_err(|e| anyhow!("rendezvous store: {e}"))?;
        Ok(value)
    }

    pub(crate) fn raw(&self) -> *mut ffi::DitStore {
        self.raw
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: raw came from dit_store_new/clone and is freed once.
        unsafe { ffi::dit_store_free(self.raw) }
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}
