//! What the binaries share: one-line errors with a non-zero exit code instead of anyhow's
//! multi-line report, and the `--device` choice.

use std::process::ExitCode;

use anyhow::{bail, Result};
use tch::Device;

/// Runs a command's body; an error prints as one line, `error: outer context: … : cause`.
pub fn run(body: impl FnOnce() -> Result<()>) -> ExitCode {
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
