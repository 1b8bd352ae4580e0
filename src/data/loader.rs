//! The [`Loader`]: shuffles a [`Dataset`] into batches in the order fixed by (seed, epoch)
//! ([`epoch_order`]), decodes them ahead of the trainer on its own rayon pool (a bounded
//! prefetch of [`PREFETCH_BATCHES`]), and caches decoded images as `u8` within a memory limit
//! (`budget.rs`) so that later epochs decode them no more. Which images the cache holds is fixed
//! by the limit alone (the first indices of the data set, as many as fit), and an image reads
//! the same from the cache as from its file, so the batches, and the training, do not depend
//! on it. Files that fail to load are warned about once and skipped. In latent space the
//! batches are read from a memory-mapped [`LatentStore`] instead (no decoding, no cache), in
//! the same order. With `train.hflip` each image of each epoch is mirrored, or its mirror
//! image's latent taken, by a coin of (seed, epoch, index) ([`flipped`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use rayon::prelude::*;
use tch::Tensor;

use super::budget::human_bytes;
use super::cache::ImageCache;
use super::latents::LatentStore;
use super::{Dataset, CHANNELS};
use crate::rng::{epoch_order, flipped};

/// Batches decoded ahead of the consumer.
const PREFETCH_BATCHES: usize = 3;

/// One batch, as handed to the trainer. Images stay `u8` on the CPU; the trainer scales them
/// (x / 255 · 2 − 1) on the device.
pub struct Batch {
    /// (B, 3, I, I), `Kind::Uint8`, CPU; in latent space the latents (B, C, h, w),
    /// `Kind::Half`, as stored (not normalised). B is below the batch size for the last batch
    /// of an epoch and when files of the batch failed to load.
    pub images: Tensor,
    /// (B), `Kind::Int64`.
    pub labels: Tensor,
    /// Dataset index of each image, in batch order.
    pub indices: Vec<usize>,
    /// Position of this batch in its epoch (0-based, counting skipped batches):
    /// `position + 1` is the `skip_batches` that resumes right after it.
    pub position: usize,
    /// Where each image sits in its global batch (the batch all processes of a data-parallel
    /// run share, of which this one is a slice; the batch itself otherwise): the row of the
    /// step's random draws that belongs to it.
    pub slots: Vec<usize>,
    /// Images the global batch was cut with (before files that failed to load).
    pub global_len: usize,
    /// Time the consumer blocked waiting for this batch.
    pub wait: Duration,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for a batch with no images (handed out by [`Loader::epoch`] only to a rank of a
    /// sharded loader, whose slice of a short last batch is empty).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// State shared by a [`Loader`] and the producer threads of its epochs.
struct Shared {
    dataset: Arc<Dataset>,
    pool: rayon::ThreadPool,
    /// Decoded images, one slot per dataset index below the cache's capacity (none in latent
    /// space).
    cache: ImageCache,
    /// The latents to hand out instead of the images, in latent space.
    latents: Option<Arc<LatentStore>>,
    /// `train.hflip`.
    hflip: bool,
    /// Images that failed to load once and are skipped from then on.
    failed: Vec<AtomicBool>,
    failed_count: AtomicUsize,
}

impl Shared {
    /// The bytes of item `i` (mirrored with `flip`): its latent, or its pixels (HWC).
    fn item(&self, i: usize, flip: bool) -> Option<Vec<u8>> {
        match &self.latents {
            Some(store) => store.item(i, flip).map(<[u8]>::to_vec),
            None => self.image(i).map(|pixels| {
                if flip {
                    mirrored(&pixels, self.dataset.img_size() as usize)
                } else {
                    pixels
                }
            }),
        }
    }

    /// Image `i`, from the cache or decoded; `None` if it fails (warned about once) or failed
    /// before.
    fn image(&self, i: usize) -> Option<Vec<u8>> {
        if self.failed[i].load(Ordering::Relaxed) {
            return None;
        }
        if let Some(hit) = self.cache.get(i) {
            return Some(hit);
        }
        match self.dataset.load(i) {
            Ok(pixels) => {
                // Two epochs decoding the same image at once both succeed; one copy is kept.
                self.cache.put(i, &pixels);
                Some(pixels)
            }
            Err(err) => {
                if !self.failed[i].swap(true, Ordering::Relaxed) {
                    self.failed_count.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("{err:#}").replace('\n', " ");
                    eprintln!("warning: skipping image {i}: {reason}");
                }
                None
            }
        }
    }

    /// Decodes the images of `indices` (slots `first_slot..` of a global batch of
    /// `global_len`) of epoch `epoch` on the pool; images that fail to load are left out, so
    /// the batch may be empty.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        indices: &[usize],
        first_slot: usize,
        global_len: usize,
        position: usize,
        (seed, epoch): (u64, u64),
        stop: &AtomicBool,
    ) -> Batch {
        let images: Vec<(usize, usize, Vec<u8>)> = self.pool.install(|| {
            indices
                .par_iter()
                .enumerate()
                .filter_map(|(j, &i)| {
                    // Once the consumer is gone, finish the batch without decoding anything.
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let flip = self.hflip && flipped(seed, epoch, i);
                    self.item(i, flip).map(|bytes| (first_slot + j, i, bytes))
                })
                .collect()
        });
        let n = images.len();
        let mut pixels = Vec::with_capacity(images.first().map_or(0, |(_, _, b)| n * b.len()));
        for (_, _, image) in &images {
            pixels.extend_from_slice(image);
        }
        let slots: Vec<usize> = images.iter().map(|(slot, _, _)| *slot).collect();
        let indices: Vec<usize> = images.iter().map(|(_, i, _)| *i).collect();
        let labels: Vec<i64> = indices
            .iter()
            .map(|&i| self.dataset.label(i).expect("epoch_order yields indices below the data set's length"))
            .collect();
        let images = match &self.latents {
            Some(store) => store.shape().batch(&pixels), // (B, C, h, w) f16
            None => {
                let side = self.dataset.img_size();
                Tensor::from_slice(&pixels)
                    .view([n as i64, side, side, CHANNELS as i64]) // (B, I, I, 3)
                    .permute([0, 3, 1, 2]) // (B, 3, I, I)
                    .contiguous()
            }
        };
        let labels = Tensor::from_slice(&labels);
        Batch { images, labels, indices, position, slots, global_len, wait: Duration::ZERO }
    }
}

/// Shuffles a [`Dataset`] into batches and decodes them ahead of the trainer on its own rayon
/// pool, caching as many decoded images as a memory limit allows.
pub struct Loader {
    shared: Arc<Shared>,
    batch_size: usize,
    shard: Shard,
}

/// This process's share of every batch in a data-parallel run: of each global batch of
/// `batch_size × world` consecutive images of the epoch's order, rank r takes positions
/// `r·batch_size .. (r+1)·batch_size`. The last global batch of an epoch may be short: ranks
/// past its end get an empty batch (so that every rank takes every step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Loader {
    /// A loader of batches of `batch_size` images decoded by `num_workers` threads (0 counts as
    /// 1), keeping decoded images in memory up to `cache_limit` bytes ([`super::CACHE_ALL`]:
    /// all of them, `img_size² × 3 + 1` bytes each; [`super::CACHE_OFF`]: none).
    pub fn new(
        dataset: Arc<Dataset>,
        batch_size: usize,
        num_workers: usize,
        cache_limit: u64,
    ) -> Result<Loader> {
        ensure!(batch_size > 0, "batch_size must be at least 1");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(num_workers.max(1))
            .thread_name(|i| format!("dit-data-{i}"))
            .build()
            .context("starting the data loader's worker threads")?;
        let len = dataset.len();
        let capacity = (cache_limit / image_cost(&dataset)).min(len as u64) as usize;
        let cache = ImageCache::new(capacity, image_bytes(&dataset));
        let failed = (0..len).map(|_| AtomicBool::new(false)).collect();
        let shared = Arc::new(Shared {
            dataset,
            pool,
            cache,
            latents: None,
            hflip: false,
            failed,
            failed_count: AtomicUsize::new(0),
        });
        Ok(Loader { shared, batch_size, shard: Shard { rank: 0, world: 1 } })
    }

    /// A loader of the latents of `dataset`'s images from `store` (encoded from them, in
    /// their order) instead of the images. Images the store could not encode are left out, as
    /// files that fail to load are.
    pub fn latent(dataset: Arc<Dataset>, store: Arc<LatentStore>, batch_size: usize) -> Result<Loader> {
        ensure!(
            store.shape().images == dataset.len(),
            "{} holds {} images, the data {}",
            store.path().display(),
            store.shape().images,
            dataset.len()
        );
        let loader = Self::new(dataset, batch_size, 1, 0)?;
        let Shared { dataset, pool, cache, hflip, failed, .. } =
            Arc::into_inner(loader.shared).expect("not shared yet");
        let missing = (0..failed.len())
            .filter(|&i| !store.valid(i))
            .inspect(|&i| failed[i].store(true, Ordering::Relaxed))
            .count();
        let shared = Shared {
            dataset,
            pool,
            cache,
            latents: Some(store),
            hflip,
            failed,
            failed_count: AtomicUsize::new(missing),
        };
        Ok(Loader { shared: Arc::new(shared), ..loader })
    }

    /// The same loader with `train.hflip` set to `on`.
    pub fn with_hflip(self, on: bool) -> Loader {
        let mut shared = Arc::into_inner(self.shared).expect("set before the first epoch");
        shared.hflip = on;
        Loader { shared: Arc::new(shared), ..self }
    }

    /// The same loader handing out only `shard`'s part of each global batch (see [`Shard`]).
    pub fn sharded(self, shard: Shard) -> Result<Loader> {
        ensure!(
            shard.world > 0 && shard.rank < shard.world,
            "shard {} of {} does not exist",
            shard.rank,
            shard.world
        );
        Ok(Loader { shard, ..self })
    }

    /// How many images the cache holds once they have been decoded, and what that costs, e.g.
    /// "300 of 300 images, 57.0 MiB".
    pub fn cache_summary(&self) -> String {
        if let Some(store) = &self.shared.latents {
            return format!("none needed: latents memory-mapped from {}", store.path().display());
        }
        let (held, len) = (self.shared.cache.capacity(), self.shared.dataset.len());
        let bytes = held as u64 * image_cost(&self.shared.dataset);
        format!("{held} of {len} images, {}", human_bytes(bytes))
    }

    /// Images per global batch: the batch size times the number of processes.
    pub fn global_batch_size(&self) -> usize {
        self.batch_size * self.shard.world
    }

    /// Batches in one epoch, the last one partial: ceil(len / global batch size).
    pub fn batches_per_epoch(&self) -> usize {
        self.shared.dataset.len().div_ceil(self.global_batch_size())
    }

    /// The batches of epoch `epoch` in the order fixed by (seed, epoch) ([`epoch_order`]),
    /// starting after the first `skip_batches` of them. Files that fail to load are warned about
    /// once and left out (their batch is smaller; a batch left empty is not handed out); an
    /// error is handed out, and the epoch ends, once every image of the data set has failed.
    pub fn epoch(&self, seed: u64, epoch: u64, skip_batches: usize) -> Epoch {
        let (sender, receiver) = sync_channel(PREFETCH_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let order = epoch_order(self.shared.dataset.len(), seed, epoch);
        let shared = self.shared.clone();
        let (batch_size, shard, producer_stop) = (self.batch_size, self.shard, stop.clone());
        let producer = std::thread::Builder::new().name("dit-data-producer".to_string()).spawn(move || {
            produce(&shared, &order, (seed, epoch), batch_size, shard, skip_batches, &sender, &producer_stop)
        });
        match producer {
            Ok(handle) => {
                Epoch { receiver: Some(receiver), producer: Some(handle), stop, pending: VecDeque::new() }
            }
            Err(err) => {
                let err = anyhow!(err).context("starting the data loader thread");
                Epoch { receiver: None, producer: None, stop, pending: VecDeque::from([err]) }
            }
        }
    }
}

/// The HWC pixels of a square image of side `side`, mirrored left to right.
fn mirrored(pixels: &[u8], side: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len());
    for row in pixels.chunks_exact(side * CHANNELS) {
        out.extend(row.chunks_exact(CHANNELS).rev().flatten());
    }
    out
}

/// Bytes of one image of `dataset`.
fn image_bytes(dataset: &Dataset) -> usize {
    let side = dataset.img_size() as usize;
    side * side * CHANNELS
}

/// Bytes one cached image of `dataset` takes.
fn image_cost(dataset: &Dataset) -> u64 {
    ImageCache::cost_per_image(image_bytes(dataset)) as u64
}

/// The producer thread of one epoch: decodes batch after batch into `sender`. A batch left
/// empty (its files failed) is skipped, except in a data-parallel run, where every rank must
/// take every step.
#[allow(clippy::too_many_arguments)]
fn produce(
    shared: &Shared,
    order: &[usize],
    seed_epoch: (u64, u64),
    batch_size: usize,
    shard: Shard,
    skip_batches: usize,
    sender: &SyncSender<Result<Batch>>,
    stop: &AtomicBool,
) {
    for (position, global) in order.chunks(batch_size * shard.world).enumerate().skip(skip_batches) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let first = (shard.rank * batch_size).min(global.len());
        let mine = &global[first..(first + batch_size).min(global.len())];
        let batch = shared.batch(mine, first, global.len(), position, seed_epoch, stop);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let message = if !batch.is_empty() {
            Ok(batch)
        } else if shared.failed_count.load(Ordering::Relaxed) >= shared.dataset.len() {
            Err(anyhow!(
                "none of the {} images of {} could be loaded (see the warnings above)",
                shared.dataset.len(),
                shared.dataset.origin
            ))
        } else if shard.world > 1 {
            Ok(batch)
        } else {
            continue;
        };
        let fatal = message.is_err();
        // A send fails only when the Epoch was dropped: stop quietly.
        if sender.send(message).is_err() || fatal {
            return;
        }
    }
}

/// The batches of one epoch (see [`Loader::epoch`]). Dropping it mid-epoch stops the
/// background work and returns once the batch being decoded is abandoned.
pub struct Epoch {
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Errors to hand out before anything else (a failed thread start).
    pending: VecDeque<anyhow::Error>,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(err) = self.pending.pop_front() {
            return Some(Err(err));
        }
        let receiver = self.receiver.as_ref()?;
        let started = Instant::now();
        match receiver.recv() {
            Ok(Ok(mut batch)) => {
                batch.wait = started.elapsed();
                Some(Ok(batch))
            }
            Ok(Err(err)) => Some(Err(err)),
            Err(_) => {
                // The producer is done: finished, or died from a panic (which must not pass for
                // a short epoch).
                self.receiver = None;
                let panicked = self.producer.take().is_some_and(|handle| handle.join().is_err());
                panicked.then(|| Err(anyhow!("the data loader thread panicked")))
            }
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver first unblocks a producer waiting on a full queue.
        self.receiver = None;
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}
