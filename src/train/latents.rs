//! Latent space (`model.autoencoder`): the autoencoder's files found (or fetched) and checked
//! against a resumed run's, and the data set encoded once into a latent store
//! (`crate::data::latents`) that later starts and resumes reuse, as fast-DiT pre-extracts its
//! features. The store lives in `latents/` beside the checkpoint, named by a hash of what it was
//! made from: the data's identity (the file list and labels resume checks, plus each file's
//! size and modification time), the encoder's sha256, `img_size` and `train.hflip`.
//!
//! Under torchrun every process encodes its share of each chunk of images (index mod world
//! size) and the chunk is completed by an all-reduce (max, the other processes' rows being
//! −∞); the first process of each machine writes the store and the others wait for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::data_identity::Fnv;
use crate::autoencoder::{self, files::Located, Encoder, LatentDecoder};
use crate::checkpoint::state::{DataIdentity, LatentMeta, TrainMeta};
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

/// The files of `cfg`'s autoencoder (`None` in pixel space), checked against the encoder a
/// resumed run's latents came from: another one is a refusal before anything is encoded.
pub(super) fn find(
    cfg: &Config,
    dir: Option<&Path>,
    resumed: Option<&TrainMeta>,
) -> Result<Option<Autoencoder>> {
    let Some(variant) = cfg.model.autoencoder else { return Ok(None) };
    let located = autoencoder::locate(variant, dir)?;
    if let Some(saved) = resumed.and_then(|m| m.latent.as_ref()) {
        ensure!(
            saved.encoder_sha256 == located.encoder_sha256,
            "{}: sha256 {}, but the run being resumed encoded its latents with an encoder of sha256 {}; \
             put that file back (or train into another checkpoint path)",
            located.encoder.display(),
            located.encoder_sha256,
            saved.encoder_sha256
        );
    }
    Ok(Some(Autoencoder { variant, located }))
}

/// The decoder and the [`LatentMeta`] of a run on `store`: the normalisation is the resumed
/// run's when there is one (the numbers it trained with), else the store's.
pub(super) fn decoder(
    ae: &Autoencoder,
    store: &LatentStore,
    resumed: Option<&TrainMeta>,
    device: Device,
) -> Result<(LatentDecoder, LatentMeta)> {
    let stats =
        resumed.and_then(|m| m.latent.as_ref()).map_or_else(|| store.stats().clone(), |l| l.stats.clone());
    let decoder = LatentDecoder::load(&ae.located, ae.variant, stats.clone(), device)?;
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
    let mut stamp = Fnv::new();
    for i in 0..dataset.len() {
        if let Some(meta) = dataset.path(i).and_then(|p| std::fs::metadata(p).ok()) {
            stamp.write(&meta.len().to_le_bytes());
            let modified = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok());
            stamp.write(&modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
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
    let dir = super::resume::parent(weights).join("latents");
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
    if let Some(store) = reuse(&path, &key) {
        if main {
            println!("latents: {} (reused)", describe(&store));
        }
        return Ok(Arc::new(store));
    }
    let encoder = autoencoder::load_encoder(&ae.located, ae.variant, device)?;
    let side = cfg.model.img_size / Variant::FACTOR;
    let shape = StoreShape {
        images: dataset.len(),
        flips: if cfg.train.hflip { 2 } else { 1 },
        channels: ae.variant.latent_channels(),
        side,
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
    let writes = pg.is_none_or(|pg| pg.world().local_rank == 0);
    let encoded = if writes {
        latents::write(&path, shape, &key, |w| {
            encode_all(&encoder, dataset, shape, pg, main, |i, z| w.put(i, z))
        })
        .map(|_| ())
    } else {
        encode_all(&encoder, dataset, shape, pg, main, |_, _| Ok(()))
    };
    match pg {
        // Every process learns whether the writers succeeded before any opens the store.
        Some(pg) => {
            let failed = pg.any(encoded.is_err())?;
            encoded?;
            ensure!(!failed, "encoding the latents failed on another process (see its messages)");
            pg.barrier()?;
        }
        None => encoded?,
    }
    let store = LatentStore::open(&path)?;
    if main {
        let secs = started.elapsed().as_secs_f64();
        let rate = (shape.images * shape.flips) as f64 / secs;
        println!("latents: {} (encoded in {secs:.1} s, {rate:.1} images/s)", describe(&store));
    }
    Ok(Arc::new(store))
}

/// The store at `path` if it exists, reads, and was made from `key`.
fn reuse(path: &Path, key: &BTreeMap<String, String>) -> Option<LatentStore> {
    let store = LatentStore::open(path).ok()?;
    latents::KEY_FIELDS.iter().all(|f| store.metadata(f) == Some(key[*f].as_str())).then_some(store)
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

/// Encodes every image of `dataset`, [`ENCODE_BATCH`] at a time (with their mirror images
/// when the store holds those), and hands each image's latents (1, F, C, h, w) to `sink`;
/// images that fail to load are warned about and left out. With `pg`, this process encodes the
/// images whose index is its rank modulo the world size, and every process sinks them all.
fn encode_all(
    encoder: &Encoder,
    dataset: &Dataset,
    shape: StoreShape,
    pg: Option<&ProcessGroup>,
    main: bool,
    mut sink: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let (rank, world) = pg.map_or((0, 1), |pg| (pg.rank(), pg.world_size()));
    let n = dataset.len();
    let mut bar = main.then(|| Progress::new("encoding", n as u64, 0));
    let started = Instant::now();
    let item = [shape.flips as i64, shape.channels, shape.side, shape.side];
    for first in (0..n).step_by(ENCODE_BATCH) {
        let chunk: Vec<usize> = (first..(first + ENCODE_BATCH).min(n)).collect();
        let loaded: Vec<(i64, Vec<u8>)> = chunk
            .par_iter()
            .enumerate()
            .filter(|(_, &i)| i % world == rank)
            .filter_map(|(k, &i)| match dataset.load(i) {
                Ok(pixels) => Some((k as i64, pixels)),
                Err(err) => {
                    eprintln!("warning: skipping image {i}: {}", format!("{err:#}").replace('\n', " "));
                    None
                }
            })
            .collect();
        // Rows of other processes stay −∞ for the all-reduce's max.
        let fill = if pg.is_some() { f64::NEG_INFINITY } else { 0.0 };
        let len = chunk.len() as i64;
        let mut rows =
            Tensor::full([len, item[0], item[1], item[2], item[3]], fill, (Kind::Float, Device::Cpu));
        let mut valid = Tensor::full([len], fill, (Kind::Float, Device::Cpu));
        if !loaded.is_empty() {
            let at = Tensor::from_slice(&loaded.iter().map(|(k, _)| *k).collect::<Vec<_>>());
            let _ = rows.index_copy_(0, &at, &encode(encoder, &loaded, dataset.img_size(), shape.flips));
            let _ = valid.index_fill_(0, &at, 1.0);
        }
        let (rows, valid) = match pg {
            Some(pg) => {
                let (r, v) = (rows.to_device(pg.device()), valid.to_device(pg.device()));
                pg.allreduce_max(&[r.shallow_clone(), v.shallow_clone()])?;
                (r.to_device(Device::Cpu), v.to_device(Device::Cpu))
            }
            None => (rows, valid),
        };
        let valid = Vec::<f32>::try_from(valid)?;
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
    }
    bar.iter().for_each(Progress::finish);
    Ok(())
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
