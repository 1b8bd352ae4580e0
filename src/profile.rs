//! libtorch's operator profiler, which tch does not expose (through `profile.cpp`): the
//! operators a stretch of work ran and their times, saved as the Chrome trace that
//! `torch.profiler` exports, so a Rust run and a PyTorch run can be compared operator by
//! operator (`tests/python/profile_ops.py`). Records the calling thread's operators on the CPU.

use std::ffi::{c_char, CString};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::ffi::call;

extern "C" {
    fn dit_profiler_start(err: *mut c_char, len: usize) -> i32;
    fn dit_profiler_stop(path: *const c_char, err: *mut c_char, len: usize) -> i32;
}

/// Records operators from now until [`Profiler::save`].
#[derive(Debug)]
pub struct Profiler(());

impl Profiler {
    pub fn start() -> Result<Self> {
        // SAFETY: the shim writes at most `len` bytes of message into the buffer it is given.
        call(|err, len| unsafe { dit_profiler_start(err, len) })
            .map_err(|e| anyhow!("starting libtorch's profiler: {e}"))?;
        Ok(Self(()))
    }

    /// Stops recording and writes the Chrome trace to `path`.
    pub fn save(self, path: &Path) -> Result<()> {
        let c = CString::new(path.to_str().with_context(|| format!("{}: not UTF-8", path.display()))?)
            .with_context(|| format!("{}: contains a NUL byte", path.display()))?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the error buffer as above.
        call(|err, len| unsafe { dit_profiler_stop(c.as_ptr(), err, len) })
            .map_err(|e| anyhow!("{}: writing the profile: {e}", path.display()))
    }
}
