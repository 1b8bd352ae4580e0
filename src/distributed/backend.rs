//! Which c10d backend carries the collectives.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use tch::Device;

/// The communication library behind a [`super::ProcessGroup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, TCP between processes.
    Gloo,
    /// NCCL: CUDA tensors, one device per process.
    Nccl,
}

impl Backend {
    /// `auto`: Gloo for CPU training, NCCL for CUDA training (as torch.distributed's default).
    pub fn auto(device: Device) -> Backend {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    /// Resolves `auto|gloo|nccl` for training on `device`; a backend that cannot serve that
    /// device is a one-line error.
    pub fn resolve(choice: &str, device: Device) -> Result<Backend> {
        let backend = match choice {
            "auto" => Backend::auto(device),
            other => other.parse()?,
        };
        backend.check(device)?;
        Ok(backend)
    }

    /// Whether this backend can reduce tensors that live on `device`.
    pub fn check(self, device: Device) -> Result<()> {
        match (self, device) {
            (Backend::Gloo, Device::Cpu) | (Backend::Nccl, Device::Cuda(_)) => Ok(()),
            (Backend::Nccl, _) => {
                bail!("the nccl backend needs CUDA tensors, but training runs on {device:?}: use gloo")
            }
            (Backend::Gloo, _) => {
                bail!("the gloo backend here reduces CPU tensors, but training runs on {device:?}: use nccl")
            }
        }
    }

    pub(crate) fn code(self) -> i32 {
        match self {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        }
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => bail!("unknown distributed backend {s:?}: expected auto, gloo or nccl"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_device() {
        assert_eq!(Backend::resolve("auto", Device::Cpu).unwrap(), Backend::Gloo);
        assert_eq!(Backend::auto(Device::Cuda(0)), Backend::Nccl);
        assert_eq!(Backend::resolve("NCCL", Device::Cuda(1)).unwrap(), Backend::Nccl);
    }

    #[test]
    fn mismatches_are_one_line_errors() {
        for (choice, device) in [("nccl", Device::Cpu), ("gloo", Device::Cuda(0)), ("mpi", Device::Cpu)] {
            let e = Backend::resolve(choice, device).unwrap_err().to_string();
            assert!(!e.contains('\n') && e.contains(choice), "{e}");
        }
    }
}
