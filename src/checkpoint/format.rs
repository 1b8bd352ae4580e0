//! The three weight-file formats users exchange with PyTorch, chosen by extension, and reading
//! and writing named tensors in each: `.ot` (TorchScript archive, tch's native format; Python
//! reads it with `torch.jit.load(p).state_dict()`, keys carry `|` for `.`), `.safetensors`, and
//! `.pth`/`.pt`/`.bin` (`torch.save` of a state_dict, the original's format).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use super::pth;
use crate::fs::write_atomic;

/// A weight-file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ot,
    Safetensors,
    Pth,
}

impl Format {
    /// The format a file name's extension (any letter case) names.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("ot") => Ok(Self::Ot),
            Some("safetensors") => Ok(Self::Safetensors),
            Some("pth" | "pt" | "bin") => Ok(Self::Pth),
            _ => bail!(
                "{}: unknown weight format; use a name ending in .ot, .safetensors, .pth, .pt or .bin",
                path.display()
            ),
        }
    }
}

/// libtorch's messages carry a C++ backtrace after the first line; users need only that line.
fn first_line(err: impl std::fmt::Display) -> String {
    err.to_string().lines().next().unwrap_or_default().to_string()
}

/// Reads every named tensor of a weight file onto the CPU.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let format = Format::from_path(path)?;
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let result = match format {
        // tch turns the archive's `|` back into `.`.
        Format::Ot => Tensor::load_multi_with_device(path, Device::Cpu),
        Format::Safetensors => Tensor::read_safetensors(path),
        Format::Pth => {
            return pth::read(path)
                .with_context(|| format!("{}: not a readable .pth state_dict", path.display()))
        }
    };
    result
        .map_err(|e| anyhow!("{}: not a readable {format:?} weight file ({})", path.display(), first_line(e)))
}

/// About the bytes a file of `named` takes: the tensors' data and a margin for the headers.
fn payload_bytes(named: &[(String, Tensor)]) -> u64 {
    named.iter().map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum::<u64>() + 65536
}

/// Writes named tensors atomically, in the format `path`'s extension names.
pub fn write_tensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let format = Format::from_path(path)?;
    let cpu: Vec<(String, Tensor)> =
        named.iter().map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    write_atomic(path, payload_bytes(&cpu), |tmp| {
        match format {
            Format::Ot => Tensor::save_multi(&cpu, tmp).map_err(|e| anyhow!(first_line(e)))?,
            Format::Safetensors => {
                Tensor::write_safetensors(&cpu, tmp).map_err(|e| anyhow!(first_line(e)))?
            }
            Format::Pth => pth::write(tmp, &cpu)?,
        }
        Ok(())
    })
}

/// [`write_tensors`], with `metadata` in the file's header when the format has one
/// (`.safetensors`; `.ot` and `.pth` have none, and are written without it).
pub fn write_tensors_with(
    path: &Path,
    named: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    match Format::from_path(path)? {
        Format::Safetensors if !metadata.is_empty() => write_f32_safetensors(path, named, metadata),
        _ => write_tensors(path, named),
    }
}

/// Writes `named` as float32 `.safetensors` with `metadata`, atomically.
pub(super) fn write_f32_safetensors(
    path: &Path,
    named: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .iter()
        .map(|(name, t)| {
            let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let mut bytes = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut bytes, t.numel());
            (name.clone(), t.size().iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, shape, bytes)| Ok((n.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<_>>()?;
    let size_hint = owned.iter().map(|(_, _, b)| b.len() as u64).sum::<u64>() + 65536;
    write_atomic(path, size_hint, |tmp| {
        safetensors::serialize_to_file(views, &Some(metadata), tmp).map_err(|e| match e {
            // Kept as an io::Error, so that a full disk is told as one (crate::fs::explain).
            safetensors::SafeTensorError::IoError(io) => io.into(),
            other => anyhow!("{other:?}"),
        })
    })
}

/// The header metadata of a `.safetensors` file (empty for other formats and for files
/// without any).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    if Format::from_path(path)? != Format::Safetensors {
        return Ok(HashMap::new());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: not a readable Safetensors weight file ({e})", path.display()))?;
    Ok(header.metadata().clone().unwrap_or_default())
}
