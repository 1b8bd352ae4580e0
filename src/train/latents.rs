//! Latent space (`model.autoencoder`): the autoencoder's files found (or fetched) and checked
//! against a resumed run's, and the data set encoded once into a latent store
//! (`crate::data::latents`) that later starts and resumes reuse, as fast-DiT pre-extracts its
//! features. The store lives in `latents/` beside the checkpoint, named by a hash of what it was
//! made from: the data's identity (the file list and labels resume checks, plus each file's
//! size, modification time, inode and change time, so a file replaced in place is seen), the
//! encoder's sha256, `img_size` and `train.hflip`. It is written under a temporary name of its
//! own and renamed ([`crate::fs::write_atomic`]); a run that finds a whole store of its key put
//! in place by another run meanwhile stops encoding and uses it.
//!
//! Under torchrun every process encodes its share of each chunk of images (index mod world
//! size) and the chunk is completed by an all-reduce (max, the other processes' rows being
//! −∞); one process per store path writes it (`election.rs`) and the others wait for it.

mod election;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::data_identity::Fnv;
use crate::autoencoder::{self, files::Located, Decoder, Encoder, LatentDecoder};
use crate::checkpoint::state::{DataIdentity, LatentMeta};
use crate::config::{Config, Variant};
use crate::data::latents::{self, StoreShape, FORMAT};
use crate::data::{human_bytes, Dataset, LatentStore};
use crate::distributed::ProcessGroup;
use crate::progress::Progress;

/// Images encoded per forward pass of the encoder.
const ENCODE_BATCH: usize = 16;

/// The autoencoder of a latent-space run: its variant and files.
pub(super) struct Autoencoder {
    pub variant: Variant,
    pub located: Located,
}

/// The files of `cfg`'s autoencoder (`None` in pixel space), checked against the encoder the
/// weights to start from were trained with (`trained`: a resumed state's, or a weight file's
/// record, `weights` being that file): another one is a refusal before anything is encoded.
pub(super) fn find(
    cfg: &Config,
    dir: Option<&Path>,
    trained: Option<&LatentMeta>,
    weights: &Path,
) -> Result<Option<Autoencoder>> {
    let Some(variant) = cfg.model.autoencoder else { return Ok(None) };
    let located = autoencoder::locate(variant, dir)?;
    if let Some(saved) = trained {
        ensure!(
            saved.encoder_sha256 == located.encoder_sha256,
            "{}: sha256 {}, but the weights of {} were trained on latents of an encoder of sha256 {}; \
             put that file back (or train into another checkpoint path)",
            located.encoder.display(),
            located.encoder_sha256,
            weights.display(),
            saved.encoder_sha256
        );
    }
    Ok(Some(Autoencoder { variant, located }))
}

/// The decoder and the [`LatentMeta`] of a run on `store`: the normalisation is the one the
/// weights to start from were trained with when there are such (`trained`), else the store's.
pub(super) fn decoder(
    ae: &Autoencoder,
    decoder: Decoder,
    store: &LatentStore,
    trained: Option<&LatentMeta>,
) -> Result<(LatentDecoder, LatentMeta)> {
    let stats = trained.map_or_else(|| store.stats().clone(), |l| l.stats.clone());
    stats.check(ae.variant.latent_channels(), &store.path().display().to_string())?;
    let decoder = LatentDecoder::new(decoder, stats.clone());
    let meta = LatentMeta {
        autoencoder: ae.variant.name().to_string(),
        encoder_sha256: ae.located.encoder_sha256.clone(),
        decoder_sha256: ae.located.decoder_sha256.clone(),
        stats,
    };
    Ok((decoder, meta))
}

/// What a store is made from, as its metadata records it.
fn key(
    cfg: &Config,
    ae: &Autoencoder,
    dataset: &Dataset,
    identity: &DataIdentity,
) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut stamp = Fnv::new();
    for i in 0..dataset.len() {
        if let Some(meta) = dataset.path(i).and_then(|p| std::fs::metadata(p).ok()) {
            // What git's index keeps: a file replaced at the same size and modification time
            // still has another inode or change time (which no user can set back).
            for v in [meta.size(), meta.mtime() as u64, meta.mtime_nsec() as u64, meta.ino()] {
                stamp.write(&v.to_le_bytes());
            }
            stamp.write(&[meta.ctime() as u64, meta.ctime_nsec() as u64].map(u64::to_le_bytes).concat());
        }
    }
    let fingerprint = format!("{}-{}-{:016x}", identity.images, identity.fingerprint, stamp.finish());
    BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("autoencoder".to_string(), ae.variant.name().to_string()),
        ("encoder_sha256".to_string(), ae.located.encoder_sha256.clone()),
        ("img_size".to_string(), cfg.model.img_size.to_string()),
        ("hflip".to_string(), cfg.train.hflip.to_string()),
        ("data_fingerprint".to_string(), fingerprint),
        ("data_path".to_string(), cfg.train.data_path.clone()),
    ])
}

/// Where the store of `key` lives: `latents/<autoencoder>-<img_size>-<hash>.safetensors` beside
/// the checkpoint `weights`.
fn store_path(weights: &Path, key: &BTreeMap<String, String>) -> PathBuf {
    let mut h = Fnv::new();
    for field in latents::KEY_FIELDS {
        h.write(field.as_bytes());
        h.write(key[field].as_bytes());
        h.write(&[0]);
    }
    let dir = crate::fs::parent(weights).join("latents");
    dir.join(format!("{}-{}-{:016x}.safetensors", key["autoencoder"], key["img_size"], h.finish()))
}

/// The latent store of `dataset` for this run: reused when one made from the same things
/// exists, else encoded now (see the module documentation). `main` says what happens.
pub(super) fn store(
    cfg: &Config,
    ae: &Autoencoder,
    dataset: &Dataset,
    identity: &DataIdentity,
    device: Device,
    pg: Option<&ProcessGroup>,
    main: bool,
) -> Result<Arc<LatentStore>> {
    let key = key(cfg, ae, dataset, identity);
    let path = store_path(Path::new(&cfg.train.model_save_path), &key);
    // What this machine's killed encodings left (a store that is reused is never rewritten).
    crate::fs::clean_dead_leftovers(&crate::fs::parent(&path));
    let plan = match pg {
        None => Plan { write: reuse(&path, &key).is_none(), encode: false },
        Some(pg) => election::elect(pg, &path, |p| reuse(p, &key).is_some())?,
    };
    let encode = plan.write || plan.encode;
    if !encode {
        let store = open(&path, &key)?;
        if main {
            println!("latents: {} (reused)", describe(&store));
        }
        return Ok(Arc::new(store));
    }
    let shape = StoreShape {
        images: dataset.len(),
        flips: if cfg.train.hflip { 2 } else { 1 },
        channels: ae.variant.latent_channels(),
        side: cfg.model.img_size / Variant::FACTOR,
    };
    if main {
        let mirrored = if shape.flips == 2 { " and their mirror images" } else { "" };
        println!(
            "latents: encoding {} images{mirrored} with {} on {device:?} into {}",
            shape.images,
            ae.variant,
            path.display()
        );
    }
    let started = Instant::now();
    let encoded = autoencoder::load_encoder(&ae.located, ae.variant, device).and_then(|encoder| {
        let run = Encoding { encoder: &encoder, dataset, shape, pg, main };
        match plan.write {
            true => write_store(&run, &path, &key),
            false => run.all(|_, _| Ok(()), || false),
        }
    });
    let appeared = encoded.as_ref().is_err_and(|e| e.is::<Appeared>());
    match pg {
        // Every process learns whether the writers succeeded before any opens a store.
        Some(pg) => {
            let failed = pg.any(encoded.is_err() && !appeared)?;
            if !appeared {
                encoded?;
            }
            ensure!(!failed, "encoding the latents failed on another process (see its messages)");
            pg.barrier()?;
        }
        None if appeared => {}
        None => encoded?,
    }
    let store = open(&path, &key)?;
    if main && appeared {
        println!("latents: {} (written meanwhile by another run, used)", describe(&store));
    } else if main {
        let secs = started.elapsed().as_secs_f64();
        let rate = (shape.images * shape.flips) as f64 / secs;
        println!("latents: {} (encoded in {secs:.1} s, {rate:.1} images/s)", describe(&store));
    }
    Ok(Arc::new(store))
}

/// What this process does for the store: encode its share of the images (`encode`, under
/// torchrun, when some process writes) and write the store (`write`).
pub(super) struct Plan {
    pub write: bool,
    pub encode: bool,
}

/// Another process put a whole store of the same key in place while this one encoded: this
/// one's temporary file is dropped and that store used.
#[derive(Debug)]
struct Appeared;

impl std::fmt::Display for Appeared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another process wrote the store meanwhile")
    }
}

impl std::error::Error for Appeared {}

/// Encodes into a new store at `path`, atomically. Alone, it checks after every chunk whether
/// another run's store of the same `key` appeared (and stops: [`Appeared`]); under torchrun it
/// checks once, before the rename, since the chunks are collective.
fn write_store(run: &Encoding, path: &Path, key: &BTreeMap<String, String>) -> Result<()> {
    let appeared = || path.exists() && reuse(path, key).is_some();
    latents::write(path, run.shape, key, |w| {
        let alone = run.pg.is_none();
        run.all(|i, z| w.put(i, z), || alone && appeared())?;
        match appeared() {
            true => Err(Appeared.into()),
            false => Ok(()),
        }
    })
    .map(|_| ())
}

/// The store at `path`, which must be whole and made from `key`.
fn open(path: &Path, key: &BTreeMap<String, String>) -> Result<LatentStore> {
    let store = LatentStore::open(path)?;
    ensure!(
        same_key(&store, key),
        "{}: the latent store was replaced by one made from other data while this run started; start again",
        path.display()
    );
    Ok(store)
}

fn same_key(store: &LatentStore, key: &BTreeMap<String, String>) -> bool {
    latents::KEY_FIELDS.iter().all(|f| store.metadata(f) == Some(key[*f].as_str()))
}

/// The store at `path` if it exists, reads, and was made from `key`.
fn reuse(path: &Path, key: &BTreeMap<String, String>) -> Option<LatentStore> {
    let store = LatentStore::open(path).ok()?;
    same_key(&store, key).then_some(store)
}

/// "300 images (and their mirror images) as 32×32×32 float16, 18.8 MiB, in <path>".
fn describe(store: &LatentStore) -> String {
    let s = store.shape();
    let bytes = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    let mirrored = if s.flips == 2 { " (and their mirror images)" } else { "" };
    let missing = match store.missing() {
        0 => String::new(),
        k => format!(", {k} that could not be loaded left out"),
    };
    format!(
        "{} images{mirrored} as {}×{}×{} float16{missing}, {}, in {}",
        s.images,
        s.channels,
        s.side,
        s.side,
        human_bytes(bytes),
        store.path().display()
    )
}

/// One encoding of a data set's images: the encoder, the images, the store's shape, and (under
/// torchrun) the group that shares the work.
struct Encoding<'a> {
    encoder: &'a Encoder,
    dataset: &'a Dataset,
    shape: StoreShape,
    pg: Option<&'a ProcessGroup>,
    main: bool,
}

impl Encoding<'_> {
    /// Encodes every image, [`ENCODE_BATCH`] at a time (with their mirror images when the store
    /// holds those), and hands each image's latents (1, F, C, h, w) to `sink`; images that fail
    /// to load are warned about and left out. With a group, this process encodes the images
    /// whose index is its rank modulo the world size, and every process sinks them all. After
    /// each chunk, `stop` may end it early ([`Appeared`]).
    fn all(&self, mut sink: impl FnMut(usize, &Tensor) -> Result<()>, stop: impl Fn() -> bool) -> Result<()> {
        let n = self.dataset.len();
        let mut bar = self.main.then(|| Progress::new("encoding", n as u64, 0));
        let started = Instant::now();
        for first in (0..n).step_by(ENCODE_BATCH) {
            let chunk: Vec<usize> = (first..(first + ENCODE_BATCH).min(n)).collect();
            let (rows, valid) = self.chunk(&chunk)?;
            for (k, &i) in chunk.iter().enumerate() {
                if valid[k] > 0.5 {
                    sink(i, &rows.narrow(0, k as i64, 1))?;
                }
            }
            if let Some(bar) = bar.as_mut() {
                let done = first + chunk.len();
                let rate = done as f64 / started.elapsed().as_secs_f64();
                bar.set(done as u64, || format!("encoding: {done}/{n} images, {rate:.1} images/s"));
            }
            if stop() {
                bar.iter().for_each(Progress::finish);
                return Err(Appeared.into());
            }
        }
        bar.iter().for_each(Progress::finish);
        Ok(())
    }

    /// The latents (B, F, C, h, w) of the images `chunk` and whether each was loaded (1.0) or
    /// not (0.0): this process's share encoded, the others' gathered.
    fn chunk(&self, chunk: &[usize]) -> Result<(Tensor, Vec<f32>)> {
        let (rank, world) = self.pg.map_or((0, 1), |pg| (pg.rank(), pg.world_size()));
        let s = self.shape;
        let loaded: Vec<(i64, Vec<u8>)> = chunk
            .par_iter()
            .enumerate()
            .filter(|(_, &i)| i % world == rank)
            .filter_map(|(k, &i)| match self.dataset.load(i) {
                Ok(pixels) => Some((k as i64, pixels)),
                Err(err) => {
                    eprintln!("warning: skipping image {i}: {}", format!("{err:#}").replace('\n', " "));
                    None
                }
            })
            .collect();
        // Rows of other processes stay −∞ for the all-reduce's max.
        let fill = if self.pg.is_some() { f64::NEG_INFINITY } else { 0.0 };
        let len = chunk.len() as i64;
        let mut rows =
            Tensor::full([len, s.flips as i64, s.channels, s.side, s.side], fill, (Kind::Float, Device::Cpu));
        let mut valid = Tensor::full([len], fill, (Kind::Float, Device::Cpu));
        if !loaded.is_empty() {
            let at = Tensor::from_slice(&loaded.iter().map(|(k, _)| *k).collect::<Vec<_>>());
            let z = encode(self.encoder, &loaded, self.dataset.img_size(), s.flips);
            let _ = rows.index_copy_(0, &at, &z);
            let _ = valid.index_fill_(0, &at, 1.0);
        }
        let (rows, valid) = match self.pg {
            Some(pg) => {
                let (r, v) = (rows.to_device(pg.device()), valid.to_device(pg.device()));
                pg.allreduce_max(&[r.shallow_clone(), v.shallow_clone()])?;
                (r.to_device(Device::Cpu), v.to_device(Device::Cpu))
            }
            None => (rows, valid),
        };
        Ok((rows, Vec::<f32>::try_from(valid)?))
    }
}

/// The latents (B, F, C, h, w) of the HWC `u8` images `loaded` of side `side`, their mirror
/// images' as the second of F = 2.
fn encode(encoder: &Encoder, loaded: &[(i64, Vec<u8>)], side: i64, flips: usize) -> Tensor {
    let bytes: Vec<u8> = loaded.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let b = loaded.len() as i64;
    let images =
        Tensor::from_slice(&bytes).view([b, side, side, 3]).permute([0, 3, 1, 2]).to_kind(Kind::Float)
            / 255.0;
    let batch = if flips == 2 { Tensor::cat(&[&images, &images.flip([3])], 0) } else { images };
    let z = encoder.encode(&batch).to_device(Device::Cpu); // (F·B, C, h, w)
    let size = z.size();
    z.view([flips as i64, b, size[1], size[2], size[3]]).transpose(0, 1).contiguous()
}
