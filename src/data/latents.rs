//! The latent store: every image of a data set encoded once by an autoencoder (and, with
//! `train.hflip`, its mirror image too), as one `.safetensors` file that Python's `safetensors`
//! reads as it is: `latents` (N, F, C, h, w) float16 (F = 2 with flips: index 1 is the mirror
//! image's), the per-channel `mean` and `std` of all of them (float32), `valid` (N) uint8 (0 for
//! an image that could not be loaded), and in the metadata what the store was made from
//! ([`KEY_FIELDS`]). It is written whole under a temporary name and renamed
//! ([`crate::fs::write_atomic`]), so a killed encoding never leaves a store that a later run
//! trusts, and read memory-mapped, so the RAM it takes is the OS page cache's, which gives it
//! back under pressure, whatever the data set's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::fs::write_atomic;

/// The value of the `format` metadata field of this layout.
pub const FORMAT: &str = "dit-latents-1";

/// The metadata fields that say what a store was made from; a store is used only when all of
/// them match what the run asks for.
pub const KEY_FIELDS: [&str; 6] =
    ["format", "autoencoder", "encoder_sha256", "img_size", "hflip", "data_fingerprint"];

/// Per-channel mean and standard deviation of the latents: the DiT trains on
/// (z − mean) / std, and sampling undoes it before decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl LatentStats {
    /// Channels described.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// An error naming `origin` unless there are `channels` finite means and positive finite
    /// deviations.
    pub fn check(&self, channels: i64, origin: &str) -> Result<()> {
        ensure!(
            self.mean.len() == channels as usize && self.std.len() == channels as usize,
            "{origin}: latent normalisation for {} channels, the model has {channels}",
            self.mean.len()
        );
        ensure!(
            self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0),
            "{origin}: latent normalisation is not finite and positive (mean {:?}, std {:?})",
            self.mean,
            self.std
        );
        Ok(())
    }

    /// (1, C, 1, 1) float32 tensors of the means and deviations on `device`.
    fn tensors(&self, device: Device) -> (Tensor, Tensor) {
        let shape = [1, self.channels() as i64, 1, 1];
        let t = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).view(shape).to_device(device);
        (t(&self.mean), t(&self.std))
    }

    /// Latents (B, C, h, w) of any float kind → (z − mean) / std, float32.
    pub fn normalise(&self, z: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(z.device());
        (z.to_kind(Kind::Float) - mean) / std
    }

    /// The inverse of [`Self::normalise`].
    pub fn denormalise(&self, x: &Tensor) -> Tensor {
        let (mean, std) = self.tensors(x.device());
        x.to_kind(Kind::Float) * std + mean
    }
}

/// The sizes of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreShape {
    /// Images of the data set (N).
    pub images: usize,
    /// Versions of each image (F): 1, or 2 with mirror images.
    pub flips: usize,
    /// Latent channels (C).
    pub channels: i64,
    /// Latent side (h = w).
    pub side: i64,
}

impl StoreShape {
    /// Values of one latent, C · h · w.
    pub fn item_values(&self) -> usize {
        (self.channels * self.side * self.side) as usize
    }

    /// Bytes of one latent in the store (float16).
    pub fn item_bytes(&self) -> usize {
        2 * self.item_values()
    }

    fn latent_bytes(&self) -> u64 {
        (self.images * self.flips * self.item_bytes()) as u64
    }

    /// Latents (B, C, h, w) float16 from the concatenated bytes of B of them.
    pub fn batch(&self, bytes: &[u8]) -> Tensor {
        let n = (bytes.len() / self.item_bytes()) as i64;
        Tensor::from_slice(bytes).view_dtype(Kind::Half).view([n, self.channels, self.side, self.side])
    }
}

/// A store opened for reading.
pub struct LatentStore {
    path: PathBuf,
    mmap: Mmap,
    shape: StoreShape,
    /// Byte offset of the first latent in the file.
    start: usize,
    valid: Vec<bool>,
    stats: LatentStats,
    metadata: BTreeMap<String, String>,
}

impl LatentStore {
    /// Maps `path` and checks its layout; every error is one line naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let what = || format!("{}: not a readable latent store", path.display());
        let file = File::open(path).with_context(what)?;
        // SAFETY: the store is only ever replaced by rename, never written in place, so the
        // mapped bytes do not change while mapped (a user truncating it by hand is not covered).
        let mmap = unsafe { Mmap::map(&file) }.with_context(what)?;
        let (start, shape, valid, stats, metadata) =
            parse(&mmap).map_err(|e| anyhow!("{}: {e:#}", what()))?;
        Ok(Self { path: path.to_path_buf(), mmap, shape, start, valid, stats, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shape(&self) -> StoreShape {
        self.shape
    }

    pub fn stats(&self) -> &LatentStats {
        &self.stats
    }

    /// A metadata field ([`KEY_FIELDS`] and the free-text ones).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Whether image `i` was encoded (false for one that could not be loaded).
    pub fn valid(&self, i: usize) -> bool {
        self.valid.get(i).copied().unwrap_or(false)
    }

    /// Images left out because they could not be loaded.
    pub fn missing(&self) -> usize {
        self.valid.iter().filter(|v| !**v).count()
    }

    /// The float16 bytes of image `i`'s latent (its mirror image's with `flip`, when the store
    /// holds those), or `None` for an image that could not be loaded.
    pub fn item(&self, i: usize, flip: bool) -> Option<&[u8]> {
        if !self.valid(i) {
            return None;
        }
        let f = usize::from(flip && self.shape.flips == 2);
        let size = self.shape.item_bytes();
        let at = self.start + (i * self.shape.flips + f) * size;
        Some(&self.mmap[at..at + size])
    }
}

type Parsed = (usize, StoreShape, Vec<bool>, LatentStats, BTreeMap<String, String>);

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{e}"))?;
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{e}"))?;
    let metadata: BTreeMap<String, String> =
        meta.metadata().clone().unwrap_or_default().into_iter().collect();
    ensure!(
        metadata.get("format").map(String::as_str) == Some(FORMAT),
        "format {:?}, expected {FORMAT:?}",
        metadata.get("format")
    );
    let latents = st.tensor("latents").map_err(|e| anyhow!("{e}"))?;
    let dims = latents.shape();
    ensure!(latents.dtype() == Dtype::F16 && dims.len() == 5, "latents must be (N, F, C, h, w) float16");
    let shape =
        StoreShape { images: dims[0], flips: dims[1], channels: dims[2] as i64, side: dims[3] as i64 };
    ensure!((1..=2).contains(&shape.flips) && dims[3] == dims[4], "latents of shape {dims:?}");
    let floats = |name: &str| -> Result<Vec<f64>> {
        let t = st.tensor(name).map_err(|e| anyhow!("{e}"))?;
        ensure!(t.dtype() == Dtype::F32 && t.shape() == [dims[2]], "{name} must be ({}) float32", dims[2]);
        Ok(t.data().chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect())
    };
    let stats = LatentStats { mean: floats("mean")?, std: floats("std")? };
    let valid = st.tensor("valid").map_err(|e| anyhow!("{e}"))?;
    ensure!(valid.dtype() == Dtype::U8 && valid.shape() == [dims[0]], "valid must be (N) uint8");
    let valid = valid.data().iter().map(|&v| v != 0).collect();
    let offset = meta.info("latents").expect("deserialize found it").data_offsets.0;
    Ok((8 + header_len + offset, shape, valid, stats, metadata))
}

/// Fills a store being written (see [`write`]).
pub struct StoreWriter {
    file: File,
    shape: StoreShape,
    start: u64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    count: f64,
    valid: Vec<bool>,
}

impl StoreWriter {
    /// Writes the latents (B, F, C, h, w) of images `first..first + B` and adds them to the
    /// statistics.
    pub fn put(&mut self, first: usize, latents: &Tensor) -> Result<()> {
        let s = self.shape;
        let b = latents.size()[0] as usize;
        ensure!(
            latents.size() == [b as i64, s.flips as i64, s.channels, s.side, s.side] && first + b <= s.images,
            "latents of shape {:?} at image {first} do not fit the store {s:?}",
            latents.size()
        );
        let z = latents.to_device(Device::Cpu).to_kind(Kind::Float);
        let per_channel = z.transpose(0, 2).reshape([s.channels, -1]).to_kind(Kind::Double);
        let sum = Vec::<f64>::try_from(per_channel.sum_dim_intlist(1, false, Kind::Double))?;
        let sum_sq = Vec::<f64>::try_from(per_channel.square().sum_dim_intlist(1, false, Kind::Double))?;
        for c in 0..s.channels as usize {
            self.sum[c] += sum[c];
            self.sum_sq[c] += sum_sq[c];
        }
        self.count += (b * s.flips * (s.side * s.side) as usize) as f64;
        let half = z.to_kind(Kind::Half).contiguous();
        let mut bytes = vec![0u8; 2 * half.numel()];
        half.copy_data_u8(&mut bytes, half.numel());
        self.file.seek(SeekFrom::Start(self.start + (first * s.flips * s.item_bytes()) as u64))?;
        self.file.write_all(&bytes)?;
        self.valid[first..first + b].iter_mut().for_each(|v| *v = true);
        Ok(())
    }

    /// The statistics of everything put so far.
    fn stats(&self) -> LatentStats {
        let n = self.count.max(1.0);
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self.sum_sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0).sqrt()).collect();
        LatentStats { mean, std }
    }
}

/// Writes the store `path` atomically: `fill` puts every image's latents (images it leaves out
/// are marked not valid); then the statistics and validity are written and the file renamed
/// into place. Returns the statistics.
pub fn write(
    path: &Path,
    shape: StoreShape,
    metadata: &BTreeMap<String, String>,
    fill: impl FnOnce(&mut StoreWriter) -> Result<()>,
) -> Result<LatentStats> {
    let mut stats = None;
    let c = shape.channels as usize;
    let (latents, floats, n) = (shape.latent_bytes(), 4 * c as u64, shape.images as u64);
    // The header is a few hundred bytes plus the metadata.
    let size_hint = latents + 2 * floats + n + 4096;
    write_atomic(path, size_hint, |tmp| {
        let mut header = serde_json::json!({
            "latents": {"dtype": "F16", "shape": [shape.images, shape.flips, c, shape.side, shape.side],
                        "data_offsets": [0, latents]},
            "mean": {"dtype": "F32", "shape": [c], "data_offsets": [latents, latents + floats]},
            "std": {"dtype": "F32", "shape": [c], "data_offsets": [latents + floats, latents + 2 * floats]},
            "valid": {"dtype": "U8", "shape": [n], "data_offsets": [latents + 2 * floats, latents + 2 * floats + n]},
        });
        header["__metadata__"] = serde_json::to_value(metadata)?;
        let mut text = serde_json::to_string(&header)?.into_bytes();
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let mut file = File::create(tmp)?;
        file.write_all(&(text.len() as u64).to_le_bytes())?;
        file.write_all(&text)?;
        let start = 8 + text.len() as u64;
        reserve(&file, start + latents + 2 * floats + n)?;
        let mut w = StoreWriter {
            file,
            shape,
            start,
            sum: vec![0.0; c],
            sum_sq: vec![0.0; c],
            count: 0.0,
            valid: vec![false; shape.images],
        };
        fill(&mut w)?;
        let s = w.stats();
        if w.valid.iter().all(|v| !v) {
            bail!("no image could be encoded");
        }
        w.file.seek(SeekFrom::Start(start + latents))?;
        for v in s.mean.iter().chain(&s.std) {
            w.file.write_all(&(*v as f32).to_le_bytes())?;
        }
        let valid: Vec<u8> = w.valid.iter().map(|&v| u8::from(v)).collect();
        w.file.write_all(&valid)?;
        w.file.flush()?;
        // What a reader gets back: float32 values.
        let round = |v: &[f64]| v.iter().map(|x| f64::from(*x as f32)).collect();
        stats = Some(LatentStats { mean: round(&s.mean), std: round(&s.std) });
        Ok(())
    })?;
    Ok(stats.expect("set by the write"))
}

/// Gives `file` its full `len` and, where the file system can, claims the space now, so a
/// disk too small for the store fails before the encoding rather than after it.
fn reserve(file: &File, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor; posix_fallocate only extends the file.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match r {
        0 => Ok(()),
        libc::EINVAL | libc::EOPNOTSUPP => Ok(file.set_len(len)?),
        code => Err(std::io::Error::from_raw_os_error(code).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BTreeMap<String, String> {
        BTreeMap::from([("format".to_string(), FORMAT.to_string()), ("autoencoder".into(), "taesd".into())])
    }

    #[test]
    fn a_written_store_reads_back_its_latents_statistics_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let shape = StoreShape { images: 3, flips: 2, channels: 2, side: 2 };
        let z = Tensor::randn([3, 2, 2, 2, 2], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let stats = write(&path, shape, &meta(), |w| {
            w.put(0, &z.narrow(0, 0, 1))?;
            w.put(2, &z.narrow(0, 2, 1)) // image 1 "failed"
        })
        .unwrap();
        let store = LatentStore::open(&path).unwrap();
        assert_eq!(store.shape(), shape);
        assert_eq!(store.stats(), &stats);
        assert_eq!((store.valid(1), store.missing(), store.item(1, false)), (false, 1, None));
        let back = shape.batch(store.item(2, true).unwrap()).to_kind(Kind::Float);
        let want = z.get(2).get(1).unsqueeze(0);
        assert!(back.allclose(&want.to_kind(Kind::Half).to_kind(Kind::Float), 0.0, 0.0, false));
        // The statistics are those of the images put, over both versions.
        let kept = Tensor::cat(&[z.get(0), z.get(2)], 0).transpose(0, 1).reshape([2, -1]);
        let mean = Vec::<f64>::try_from(kept.mean_dim(1, false, Kind::Double)).unwrap();
        let std = Vec::<f64>::try_from(kept.to_kind(Kind::Double).std_dim(1, false, false)).unwrap();
        for c in 0..2 {
            assert!(
                (stats.mean[c] - mean[c]).abs() < 1e-5 && (stats.std[c] - std[c]).abs() < 1e-5,
                "{stats:?}"
            );
        }
        assert_eq!(store.metadata("autoencoder"), Some("taesd"));
    }

    #[test]
    fn normalising_then_denormalising_gives_the_latents_back() {
        let stats = LatentStats { mean: vec![0.5, -1.0], std: vec![2.0, 0.25] };
        let z = Tensor::randn([3, 2, 4, 4], (Kind::Float, Device::Cpu));
        let x = stats.normalise(&z);
        assert!((x.get(0).get(1) - (z.get(0).get(1) + 1.0) * 4.0).abs().max().double_value(&[]) < 1e-6);
        assert!(stats.denormalise(&x).allclose(&z, 1e-6, 1e-6, false));
    }

    #[test]
    fn a_killed_encoding_leaves_no_store_and_a_damaged_one_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let shape = StoreShape { images: 2, flips: 1, channels: 1, side: 2 };
        let err = write(&path, shape, &meta(), |_| bail!("killed")).unwrap_err();
        assert!(format!("{err:#}").contains("killed"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
        write(&path, shape, &meta(), |w| {
            w.put(0, &Tensor::ones([2, 1, 1, 2, 2], (Kind::Float, Device::Cpu)))
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = format!("{:#}", LatentStore::open(&path).err().unwrap());
        assert!(err.starts_with(&format!("{}: not a readable latent store", path.display())), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
