//! The training data: a folder of images or a built-in procedural data set ([`Dataset`]), and
//! the [`Loader`] that shuffles it, decodes it on a rayon pool in the background and hands out
//! batches of `u8` images.
//!
//! The original (docs/ORIGINAL.md §5) read every png/jpg/jpeg file of one folder with label 0 and
//! divided the pixels by 255 with no resize and no colour conversion, so it only worked on
//! 256×256 RGB files. Here any size and colour type is accepted (`decode.rs`: torchvision's
//! `Resize + CenterCrop`, with JPEGs shrunk in the decoder, `jpeg.rs`, and a SIMD resizer,
//! `resize.rs`), webp is read too, and sub-folders become classes as in torchvision's
//! `ImageFolder` or are ignored (`folder.rs`, `walk.rs`). The order of an epoch depends on
//! (seed, epoch) only ([`crate::rng::epoch_order`]), so a run resumed mid-epoch sees exactly the
//! batches it would have seen; the decoded-image cache's size (`budget.rs`) changes nothing in
//! them.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use crate::config::ClassLayout;

mod budget;
mod builtin;
mod cache;
mod decode;
mod folder;
mod jpeg;
mod jpeg_markers;
pub mod latents;
mod loader;
mod pixels;
mod resize;
mod turbo;
mod walk;

pub use budget::{available_memory, cache_budget, human_bytes, CacheBudget, CACHE_ALL, CACHE_OFF};
use builtin::Builtin;
pub use builtin::{render_panda, render_red_panda, BUILTIN_LEN, BUILTIN_PANDAS, BUILTIN_PANDAS2};
pub use decode::{MAX_DECODE_BYTES, MAX_DECODE_SIDE};
use folder::Folder;
pub use folder::IMAGE_EXTENSIONS;
pub use latents::{LatentStats, LatentStore};
pub use loader::{Batch, Epoch, Loader, Shard};
pub use pixels::to_model_range;

/// Largest `img_size` accepted by [`Dataset::open`].
pub const MAX_IMG_SIZE: i64 = 4096;
/// Channels of every image handed out (RGB).
const CHANNELS: usize = 3;

/// Where the images of a [`Dataset`] come from.
enum Source {
    /// The procedural generator.
    Builtin(Builtin),
    /// Image files, with one label each.
    Files { paths: Vec<PathBuf>, labels: Vec<i64> },
}

/// An indexable set of labelled square RGB images of side `img_size`.
pub struct Dataset {
    source: Source,
    /// The `data_path` it was opened with, for messages.
    origin: String,
    class_names: Vec<String>,
    img_size: i64,
    /// Folders the scan could not read (printed when opened).
    warnings: Vec<String>,
}

impl Dataset {
    /// Opens `builtin:pandas`, `builtin:pandas2`, or a folder of png/jpg/jpeg/webp files with
    /// its sub-folders as classes ([`ClassLayout::Folders`]); see [`Dataset::open_as`].
    pub fn open(data_path: &str, img_size: i64) -> Result<Dataset> {
        Self::open_as(data_path, img_size, ClassLayout::Folders)
    }

    /// Opens `builtin:pandas`, `builtin:pandas2`, or a folder of png/jpg/jpeg/webp files
    /// labelled as `classes` says.
    ///
    /// `Folders`: a folder whose sub-folders hold images gives one class per such sub-folder
    /// (sorted by name, labels 0..K-1, each with the images at any depth below it; loose files
    /// at the top are ignored with a warning); otherwise every image directly in the folder gets
    /// label 0 and the one class is named after the folder. `None`: every image below the
    /// folder, at any depth, gets label 0. Files are sorted by path; hidden entries (names
    /// starting with `.`) are skipped; folders that cannot be read are named in one warning
    /// each. Nothing is decoded here.
    pub fn open_as(data_path: &str, img_size: i64, classes: ClassLayout) -> Result<Dataset> {
        ensure!(
            (1..=MAX_IMG_SIZE).contains(&img_size),
            "img_size must be between 1 and {MAX_IMG_SIZE}, got {img_size} (opening {data_path:?})"
        );
        let (source, class_names, warnings) = match Builtin::named(data_path) {
            Some(builtin) => (Source::Builtin(builtin), builtin.class_names(), Vec::new()),
            None => {
                let Folder { paths, labels, class_names, warnings } =
                    Folder::scan(Path::new(data_path), classes)?;
                (Source::Files { paths, labels }, class_names, warnings)
            }
        };
        for warning in &warnings {
            eprintln!("{warning}");
        }
        Ok(Dataset { source, origin: data_path.to_string(), class_names, img_size, warnings })
    }

    /// The warnings of the folder scan (folders that could not be read), as printed by `open`.
    pub fn scan_warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Builtin(_) => BUILTIN_LEN,
            Source::Files { paths, .. } => paths.len(),
        }
    }

    /// Always false: opening an empty folder is an error.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class of image `i`, or `None` for an index out of range.
    pub fn label(&self, i: usize) -> Option<i64> {
        match &self.source {
            Source::Builtin(builtin) => builtin.label(i),
            Source::Files { labels, .. } => labels.get(i).copied(),
        }
    }

    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Side of the square images handed out.
    pub fn img_size(&self) -> i64 {
        self.img_size
    }

    /// The file behind image `i`, or `None` for a built-in image or an index out of range.
    pub fn path(&self, i: usize) -> Option<&Path> {
        match &self.source {
            Source::Builtin(_) => None,
            Source::Files { paths, .. } => paths.get(i).map(PathBuf::as_path),
        }
    }

    /// One line for logs, e.g. "300 images in ../shared/datasets/pandas (1 class)".
    pub fn describe(&self) -> String {
        let classes = match self.class_names.len() {
            1 => "1 class".to_string(),
            k => format!("{k} classes: {}", self.class_names.join(", ")),
        };
        match &self.source {
            Source::Builtin(_) => {
                format!("{} procedural images from {} ({classes})", self.len(), self.origin)
            }
            Source::Files { .. } => format!("{} images in {} ({classes})", self.len(), self.origin),
        }
    }

    /// Image `i` as RGB `u8`, HWC, `img_size × img_size × 3` bytes. Errors name the file.
    pub fn load(&self, i: usize) -> Result<Vec<u8>> {
        ensure!(i < self.len(), "image index {i} out of range: {} has {} images", self.origin, self.len());
        match &self.source {
            Source::Builtin(builtin) => Ok(builtin.render(i, self.img_size)),
            Source::Files { paths, .. } => decode::load_file(&paths[i], self.img_size),
        }
    }
}
