//! What the binaries share: one-line errors with a non-zero exit code instead of anyhow's
//! multi-line report, and the `--device` choice.

use std::process::ExitCode;

use anyhow::{bail, Result};
use tch::Device;

/// Largest allocation glibc serves from the heap instead of a fresh mmap (its maximum).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory glibc keeps at the top of the heap instead of returning it to the kernel.
const TRIM_THRESHOLD: i32 = 512 << 20;

/// libtorch frees and reallocates the same large activation buffers every step; with glibc's
/// defaults each one is a fresh mmap whose pages fault in again (measured: 16% of a 32×32
/// training step). Keeping them in the heap removes that cost.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Runs a command's body; an error prints as one line, `error: outer context: … : cause`.
pub fn run(body: impl FnOnce() -> Result<()>) -> ExitCode {
    tune_allocator();
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Cuda => {
                bail!("--device cuda: no CUDA device is available (tch::Cuda::is_available() is false)")
            }
        }
    }
}
