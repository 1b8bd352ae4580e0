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

    /// Whether this build of dit has the backend: Gloo always; NCCL where build.rs found the
    /// CUDA and NCCL headers (scripts/setup installs them into the venv).
    pub fn compiled(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: a constant-returning function of the shim, no arguments.
            Backend::Nccl => (unsafe { super::ffi::dit_nccl_compiled() }) != 0,
        }
    }

    /// Whether this build has the backend and it can reduce tensors that live on `device`.
    pub fn check(self, device: Device) -> Result<()> {
        if !self.compiled() {
            bail!("the {self} backend is not in this build of dit: build.rs found no CUDA/NCCL headers (run scripts/setup, or set CUDA_HOME to a CUDA toolkit, and rebuild)")
        }
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
        assert_eq!("NCCL".parse::<Backend>().unwrap(), Backend::Nccl);
    }

    /// scripts/setup installs the CUDA headers beside a CUDA wheel, so a build against one must
    /// carry the NCCL backend; a CPU-only libtorch builds without it and says so in one line.
    #[test]
    fn nccl_is_compiled_in_exactly_when_libtorch_has_cuda() {
        let libtorch =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".libtorch/lib/libtorch_cuda.so");
        assert_eq!(Backend::Nccl.compiled(), libtorch.exists());
        match Backend::resolve("nccl", Device::Cuda(0)) {
            Ok(b) => assert_eq!(b, Backend::Nccl),
            Err(e) => assert!(!Backend::Nccl.compiled() && !e.to_string().contains('\n'), "{e}"),
        }
    }

    #[test]
    fn mismatches_are_one_line_errors() {
        for (choice, device) in [("nccl", Device::Cpu), ("gloo", Device::Cuda(0)), ("mpi", Device::Cpu)] {
            let e = Backend::resolve(choice, device).unwrap_err().to_string();
            assert!(!e.contains('\n') && e.contains(choice), "{e}");
        }
    }
}
