//! Inception features of an image set, in batches, and the cache of a data set's features: a
//! second `eval` against the same data at the same size reads them. The cache is a
//! `.safetensors` file in `.dit-features/` inside a data folder (hidden, so the data set's walk
//! skips it; `${XDG_CACHE_HOME:-$HOME/.cache}/dit/features` for built-in sets and folders that
//! cannot be written), named by a hash of what the features were made from, as the latent
//! store is: every chosen file's path, size, modification and change times and inode, the
//! class, the image size, and the network file's sha256.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::inception::Inception;
use crate::data::Dataset;
use crate::progress::Progress;

/// Images through the network at once (pytorch-fid's default batch).
pub const BATCH: i64 = 50;

/// Version of the cache files' layout and key; a change makes old files unused.
const FORMAT: &str = "dit-inception-features-1";

/// The (N, 2048) float32 features of `pixels` (N, 3, S, S): uint8, or floats in [0, 1]; a
/// batch at a time, with a progress bar labelled `label` when `progress` is set.
pub fn features(net: &Inception, pixels: &Tensor, label: &str, progress: bool) -> Tensor {
    let n = pixels.size()[0];
    let mut bar = progress.then(|| Progress::new(label, n as u64, 0));
    let mut parts = Vec::new();
    for start in (0..n).step_by(BATCH as usize) {
        let len = BATCH.min(n - start);
        let batch = pixels.narrow(0, start, len);
        let batch = if batch.kind() == Kind::Uint8 { batch.to_kind(Kind::Float) / 255.0 } else { batch };
        parts.push(net.features(&batch).to_device(tch::Device::Cpu));
        if let Some(bar) = bar.as_mut() {
            bar.set((start + len) as u64, || format!("{label}: {} of {n} images", start + len));
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Tensor::cat(&parts, 0)
}

/// Where the features of the images `chosen` of `dataset` (opened from `data`, at its
/// `img_size`, with `class`) from the network file of sha256 `net_sha256` are cached.
pub fn cache_path(
    data: &str,
    dataset: &Dataset,
    chosen: &[usize],
    class: Option<i64>,
    net_sha256: &str,
) -> PathBuf {
    let mut h = Sha256::new();
    for part in [FORMAT, net_sha256, &dataset.img_size().to_string(), &format!("{class:?}")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for &i in chosen {
        h.update(i.to_le_bytes());
        if let Some(path) = dataset.path(i) {
            h.update(path.as_os_str().as_encoded_bytes());
            if let Ok(m) = std::fs::metadata(path) {
                for v in [
                    m.size(),
                    m.mtime() as u64,
                    m.mtime_nsec() as u64,
                    m.ino(),
                    m.ctime() as u64,
                    m.ctime_nsec() as u64,
                ] {
                    h.update(v.to_le_bytes());
                }
            }
        }
    }
    let digest: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("inception-{}-{digest}.safetensors", dataset.img_size());
    let folder = Path::new(data);
    let beside = folder.is_dir().then(|| folder.join(".dit-features"));
    match beside.filter(|dir| writable(dir)) {
        Some(dir) => dir.join(name),
        None => user_cache().join(name),
    }
}

/// Whether files can be created in `dir` (made if missing).
fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}-{}", std::process::id(), crate::fs::random()));
    let ok = std::fs::create_dir_all(dir).is_ok() && std::fs::File::create_new(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn user_cache() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache =
        var("XDG_CACHE_HOME").filter(|d| d.is_absolute()).or_else(|| var("HOME").map(|h| h.join(".cache")));
    cache.unwrap_or_else(std::env::temp_dir).join("dit").join("features")
}

/// The cached features at `path` when they are there and whole, else `compute()`'s, saved
/// there (a failure to save is a note: the numbers do not depend on it).
pub fn cached(path: &Path, compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    if let Ok(mut named) = Tensor::read_safetensors(path) {
        if let Some((_, t)) = named.drain(..).find(|(name, _)| name == "features") {
            if t.dim() == 2 && t.size()[1] == super::inception::FEATURES {
                return Ok(t);
            }
        }
    }
    let features = compute()?;
    let saved =
        std::fs::create_dir_all(crate::fs::parent(path)).context("cannot create the folder").and_then(|_| {
            let bytes = (features.numel() * 4) as u64;
            crate::fs::write_atomic(path, bytes, |tmp| {
                Ok(Tensor::write_safetensors(&[("features", &features)], tmp)?)
            })
        });
    if let Err(err) = saved {
        eprintln!("note: the data's features were not cached at {}: {err:#}", path.display());
    }
    Ok(features)
}
