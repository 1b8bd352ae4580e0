//! Gradient averaging during the backward pass, by DistributedDataParallel's own engine,
//! c10d's `Reducer`: hooks on the parameters' gradient accumulators copy each gradient into
//! its bucket as backward produces it and start that bucket's all-reduce at once, so
//! communication overlaps the rest of the backward pass; backward returns with every
//! `.grad` averaged over the ranks.

use std::ptr;

use anyhow::{anyhow, Result};
use tch::Tensor;

use super::{ffi, ProcessGroup};

/// DDP's bucket sizes: a small first bucket (1 MiB) so the last layers' gradients leave
/// early, then 25 MiB buckets.
pub const FIRST_BUCKET_BYTES: i64 = 1 << 20;
pub const BUCKET_BYTES: i64 = 25 << 20;

/// The Reducer of one model replica's parameters.
pub struct GradReducer {
    raw: *mut ffi::DitReducer,
}

// SAFETY: the Reducer is driven from one thread at a time (not Sync).
unsafe impl Send for GradReducer {}

impl GradReducer {
    /// Registers the hooks on `params` (the trainable tensors, all requiring gradients; the
    /// same list in the same order on every rank). The Reducer keeps the process group alive.
    pub fn new(pg: &ProcessGroup, params: &[Tensor]) -> Result<GradReducer> {
        let ptrs: Vec<*const torch_sys::C_tensor> = params.iter().map(|t| t.as_ptr()).collect();
        let mut raw = ptr::null_mut();
        ffi::call(|err, len| unsafe {
            ffi::dit_reducer_new(
                pg.raw(),
                ptrs.as_ptr(),
                ptrs.len(),
                BUCKET_BYTES,
                FIRST_BUCKET_BYTES,
                &mut raw,
                err,
                len,
            )
        })
        .map_err(|e| anyhow!("cannot set up gradient averaging: {e}"))?;
        Ok(GradReducer { raw })
    }

    /// Call on every rank before each backward pass whose gradients are to be averaged; a
    /// backward pass without it leaves the gradients local. The first call after the first
    /// step also rebuilds the buckets in the order gradients arrived (a collective).
    /// Errors of the all-reduce itself come back from the backward call: map them with
    /// [`ProcessGroup::failure`].
    pub fn prepare(&mut self, pg: &ProcessGroup) -> Result<()> {
        ffi::call(|err, len| unsafe { ffi::dit_reducer_prepare(self.raw, err, len) })
            .map_err(|e| pg.failure("preparing gradient averaging", e))
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: raw came from dit_reducer_new and is freed once.
        unsafe { ffi::dit_reducer_free(self.raw) }
    }
}
