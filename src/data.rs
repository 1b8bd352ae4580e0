//! The training data: a folder of images or a built-in procedural data set ([`Dataset`]), and
//! the [`Loader`] that shuffles it, decodes it on a rayon pool in the background and hands out
//! batches of `u8` images.
//!
//! The original (docs/ORIGINAL.md §5) read every png/jpg/jpeg file of one folder with label 0 and
//! divided the pixels by 255 with no resize and no colour conversion, so it only worked on
//! 256×256 RGB files. Here any size and colour type is accepted: each image is converted to
//! RGB8, its EXIF orientation applied, the shorter side resized to `img_size` (triangle filter,
//! i.e. area-weighted when shrinking) and the centre cropped to a square, which is torchvision's
//! `Resize(I) + CenterCrop(I)`. Sub-folders become classes as in torchvision's `ImageFolder`.
//!
//! The order of an epoch is a Fisher–Yates shuffle driven by SplitMix64 (Steele, Lea & Flood,
//! "Fast splittable pseudorandom number generators", OOPSLA 2014) seeded from (seed, epoch)
//! only, so a run resumed mid-epoch sees exactly the batches it would have seen.

use std::collections::VecDeque;
use std::fs;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use tch::Tensor;

/// `data_path` of the one-class procedural panda data set.
pub const BUILTIN_PANDAS: &str = "builtin:pandas";
/// `data_path` of the two-class procedural data set: pandas (label 0) and red pandas (label 1).
pub const BUILTIN_PANDAS2: &str = "builtin:pandas2";
/// Number of images in each built-in data set.
pub const BUILTIN_LEN: usize = 4096;
/// File extensions (compared without regard to case) that a folder scan picks up.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// Largest side a decoded image may declare; larger headers are refused before any allocation.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// Largest buffer one decode may allocate (1 GiB).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// Largest `img_size` accepted by [`Dataset::open`].
pub const MAX_IMG_SIZE: i64 = 4096;
/// Batches decoded ahead of the consumer.
const PREFETCH_BATCHES: usize = 3;
/// Channels of every image handed out (RGB).
const CHANNELS: usize = 3;

/// Where the images of a [`Dataset`] come from.
enum Source {
    /// The procedural generator; `classes` is 1 (pandas) or 2 (pandas, red pandas alternating).
    Builtin { classes: usize },
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
}

impl Dataset {
    /// Opens `builtin:pandas`, `builtin:pandas2`, or a folder of png/jpg/jpeg files.
    ///
    /// A folder whose sub-folders hold images gives one class per such sub-folder (sorted by
    /// name, labels 0..K-1; loose files at the top are ignored with a warning); otherwise every
    /// image directly in the folder gets label 0 and the one class is named after the folder.
    /// Files are sorted by path; hidden entries (names starting with `.`) are skipped. Only one
    /// level of sub-folders is read. Nothing is decoded here.
    pub fn open(data_path: &str, img_size: i64) -> Result<Dataset> {
        ensure!(
            (1..=MAX_IMG_SIZE).contains(&img_size),
            "img_size must be between 1 and {MAX_IMG_SIZE}, got {img_size} (opening {data_path:?})"
        );
        let (source, class_names) = match data_path {
            BUILTIN_PANDAS => (Source::Builtin { classes: 1 }, vec!["panda".to_string()]),
            BUILTIN_PANDAS2 => {
                (Source::Builtin { classes: 2 }, vec!["panda".to_string(), "red_panda".to_string()])
            }
            folder => {
                let (paths, labels, names) = scan_folder(Path::new(folder))?;
                (Source::Files { paths, labels }, names)
            }
        };
        Ok(Dataset { source, origin: data_path.to_string(), class_names, img_size })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Builtin { .. } => BUILTIN_LEN,
            Source::Files { paths, .. } => paths.len(),
        }
    }

    /// Always false: opening an empty folder is an error.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class of image `i` (0 for an index out of range).
    pub fn label(&self, i: usize) -> i64 {
        match &self.source {
            Source::Builtin { classes } => (i % classes) as i64,
            Source::Files { labels, .. } => labels.get(i).copied().unwrap_or(0),
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
            Source::Builtin { .. } => None,
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
            Source::Builtin { .. } => {
                format!("{} procedural images from {} ({classes})", self.len(), self.origin)
            }
            Source::Files { .. } => format!("{} images in {} ({classes})", self.len(), self.origin),
        }
    }

    /// Image `i` as RGB `u8`, HWC, `img_size × img_size × 3` bytes. Errors name the file.
    pub fn load(&self, i: usize) -> Result<Vec<u8>> {
        ensure!(i < self.len(), "image index {i} out of range: {} has {} images", self.origin, self.len());
        match &self.source {
            Source::Builtin { classes } => Ok(match (*classes, i % 2) {
                (2, 1) => render_red_panda(i, self.img_size),
                _ => render_panda(i, self.img_size),
            }),
            Source::Files { paths, .. } => load_file(&paths[i], self.img_size),
        }
    }
}

/// Lists the images of `root` (see [`Dataset::open`]): (paths, labels, class names).
fn scan_folder(root: &Path) -> Result<(Vec<PathBuf>, Vec<i64>, Vec<String>)> {
    let shown = root.display();
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("data folder {shown} does not exist")
        }
        Err(e) => return Err(e).with_context(|| format!("reading data folder {shown}")),
    };
    ensure!(meta.is_dir(), "data path {shown} is not a folder");

    let (loose, subfolders) = list_folder(root)?;
    let mut classes = Vec::new();
    for sub in subfolders {
        let (files, _) = list_folder(&sub)?;
        if !files.is_empty() {
            let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            classes.push((name, files));
        }
    }

    if classes.is_empty() {
        ensure!(
            !loose.is_empty(),
            "no image files ({}) found in data folder {shown}",
            IMAGE_EXTENSIONS.join(", ")
        );
        let labels = vec![0; loose.len()];
        return Ok((loose, labels, vec![folder_name(root)]));
    }
    if !loose.is_empty() {
        eprintln!(
            "warning: ignoring {} image file(s) directly in {shown}: its sub-folders are the classes",
            loose.len()
        );
    }
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    let mut names = Vec::new();
    for (label, (name, files)) in classes.into_iter().enumerate() {
        labels.extend(std::iter::repeat_n(label as i64, files.len()));
        paths.extend(files);
        names.push(name);
    }
    Ok((paths, labels, names))
}

/// The image files (sorted by path) and the sub-folders (sorted by name) directly in `dir`.
fn list_folder(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let context = || format!("reading folder {}", dir.display());
    let mut files = Vec::new();
    let mut folders = Vec::new();
    for entry in fs::read_dir(dir).with_context(context)? {
        let path = entry.with_context(context)?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        // is_dir / is_file follow symbolic links; a broken link is neither and is skipped.
        if path.is_dir() {
            folders.push(path);
        } else if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    files.sort();
    folders.sort();
    Ok((files, folders))
}

fn has_image_extension(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known))
}

/// The last component of `root`, resolving "." and ".." through the file system.
fn folder_name(root: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(root)
        .filter(|n| n != "." && n != "..")
        .or_else(|| root.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| root.display().to_string())
}

/// Reads and decodes one file into `img_size × img_size × 3` RGB bytes.
fn load_file(path: &Path, img_size: i64) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    // Image decoders are third-party code fed untrusted bytes: a panic there is one bad file.
    let decoded = catch_unwind(AssertUnwindSafe(|| decode_image(&bytes)))
        .unwrap_or_else(|_| Err(anyhow!("the decoder panicked")))
        .with_context(|| format!("decoding image {}", path.display()))?;
    Ok(square_resize(&decoded, img_size as u32))
}

/// Decodes `bytes` with the format guessed from the content (not the file name), within
/// [`MAX_DECODE_SIDE`] and [`MAX_DECODE_BYTES`], applies the EXIF orientation, returns RGB8.
fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    ensure!(reader.format().is_some(), "not a PNG or JPEG file (unrecognised content)");
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // into_decoder checks the declared size against the limits before any pixel is allocated.
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    ensure!(width > 0 && height > 0, "empty image ({width}×{height})");
    ensure!(
        decoder.total_bytes() <= MAX_DECODE_BYTES,
        "image too large to decode ({width}×{height}, {} bytes)",
        decoder.total_bytes()
    );
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Resizes the shorter side to `size` and crops the centre square, as `Resize + CenterCrop`:
/// done as crop-then-resize, which selects the same source square and resizes fewer pixels.
fn square_resize(image: &RgbImage, size: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    if w == size && h == size {
        return image.as_raw().clone();
    }
    let side = w.min(h);
    let square = image::imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side);
    image::imageops::resize(&*square, size, size, FilterType::Triangle).into_raw()
}

/// Bytes needed to hold `len` decoded images of side `img_size` in the loader's cache.
pub fn memory_estimate(len: usize, img_size: i64) -> u64 {
    let side = img_size.max(0) as u64;
    len as u64 * side * side * CHANNELS as u64
}

// ---------------------------------------------------------------------------------------------
// Randomness: SplitMix64, no global state.

/// SplitMix64's increment (2⁶⁴ / φ).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0), by the multiply-high method; the bias is below n / 2⁶⁴.
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The order of epoch `epoch`: a permutation of 0..len that depends only on (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut mixer = SplitMix64(seed);
    let mut rng = SplitMix64(mixer.next_u64() ^ epoch.wrapping_mul(GOLDEN_GAMMA));
    let mut order: Vec<usize> = (0..len).collect();
    // Fisher–Yates, from the back.
    for i in (1..len).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

// ---------------------------------------------------------------------------------------------
// The built-in data sets: flat cartoon faces, drawn with 4×4 supersampling.

/// Seed of the per-image hash of the built-in data sets.
const BUILTIN_SEED: u64 = 0x5EED_0FDA_BEA5;
/// Supersamples per pixel side.
const SUPERSAMPLE: usize = 4;
/// Muted background colours, one picked per image.
const BACKGROUNDS: [[f32; 3]; 6] = [
    [122.0, 150.0, 118.0], // sage
    [118.0, 138.0, 166.0], // slate blue
    [172.0, 152.0, 118.0], // khaki
    [152.0, 122.0, 134.0], // dusty mauve
    [108.0, 136.0, 138.0], // teal grey
    [160.0, 160.0, 138.0], // grey beige
];
/// Face radius as a fraction of the image side (±6% per image).
const FACE_RADIUS: f64 = 0.30;
const FACE_RADIUS_JITTER: f64 = 0.06;
/// Largest offset of the face centre from the image centre, as a fraction of the side.
const CENTRE_JITTER: f64 = 0.03;
/// Largest head tilt, in degrees.
const MAX_TILT_DEG: f64 = 5.0;

const PANDA_BLACK: [f32; 3] = [28.0, 27.0, 30.0];
const EYE_WHITE: [f32; 3] = [235.0, 235.0, 228.0];
const RED_PANDA_FUR: [f32; 3] = [204.0, 98.0, 40.0];
const RED_PANDA_DARK: [f32; 3] = [96.0, 38.0, 22.0];
const RED_PANDA_TEAR: [f32; 3] = [150.0, 58.0, 26.0];
const RED_PANDA_WHITE: [f32; 3] = [240.0, 236.0, 226.0];
const RED_PANDA_EYE: [f32; 3] = [36.0, 22.0, 18.0];

/// The pose and colours of one built-in image.
struct Pose {
    /// Face centre, in units of the image side.
    cx: f64,
    cy: f64,
    /// Face radius, in units of the image side.
    radius: f64,
    cos: f64,
    sin: f64,
    background: [f32; 3],
    /// Small per-image shift of the face colour.
    shade: f32,
}

impl Pose {
    fn of(index: usize) -> Pose {
        let mut rng = SplitMix64(BUILTIN_SEED ^ (index as u64).wrapping_mul(GOLDEN_GAMMA));
        rng.next_u64();
        let background = BACKGROUNDS[rng.below(BACKGROUNDS.len())];
        let cx = 0.5 + rng.range(-CENTRE_JITTER, CENTRE_JITTER);
        let cy = 0.5 + rng.range(-CENTRE_JITTER, CENTRE_JITTER);
        let radius = FACE_RADIUS * (1.0 + rng.range(-FACE_RADIUS_JITTER, FACE_RADIUS_JITTER));
        let tilt = rng.range(-MAX_TILT_DEG, MAX_TILT_DEG).to_radians();
        let shade = rng.range(-6.0, 6.0) as f32;
        Pose { cx, cy, radius, cos: tilt.cos(), sin: tilt.sin(), background, shade }
    }

    /// The point (u, v) of the image (units of the side, y down) in face coordinates: face
    /// centre at the origin, face radius 1, the head's tilt undone.
    fn local(&self, u: f64, v: f64) -> (f64, f64) {
        let (dx, dy) = ((u - self.cx) / self.radius, (v - self.cy) / self.radius);
        (dx * self.cos + dy * self.sin, -dx * self.sin + dy * self.cos)
    }
}

/// Whether (x, y) lies in the ellipse centred at (cx, cy) with semi-axes (a, b), turned by
/// `angle` radians (clockwise on screen, since y points down).
fn in_ellipse(x: f64, y: f64, (cx, cy): (f64, f64), (a, b): (f64, f64), angle: f64) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    let (c, s) = (angle.cos(), angle.sin());
    let (ex, ey) = (dx * c + dy * s, -dx * s + dy * c);
    (ex / a).powi(2) + (ey / b).powi(2) <= 1.0
}

fn in_circle(x: f64, y: f64, centre: (f64, f64), r: f64) -> bool {
    in_ellipse(x, y, centre, (r, r), 0.0)
}

/// The lower half of a thin ring: one side of a cartoon mouth.
fn in_smile(x: f64, y: f64, (cx, cy): (f64, f64), r: f64, half_width: f64) -> bool {
    let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
    y >= cy && (d - r).abs() <= half_width
}

/// Renders `paint` (face coordinates → colour) into `img_size²` RGB bytes with supersampling.
fn render(pose: &Pose, img_size: i64, paint: impl Fn(f64, f64) -> Option<[f32; 3]>) -> Vec<u8> {
    let size = img_size.max(1) as usize;
    let mut out = Vec::with_capacity(size * size * CHANNELS);
    let step = 1.0 / (size * SUPERSAMPLE) as f64;
    let weight = 1.0 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for py in 0..size {
        for px in 0..size {
            let mut sum = [0f32; 3];
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let u = ((px * SUPERSAMPLE + sx) as f64 + 0.5) * step;
                    let v = ((py * SUPERSAMPLE + sy) as f64 + 0.5) * step;
                    let (x, y) = pose.local(u, v);
                    let colour = paint(x, y).unwrap_or(pose.background);
                    for (acc, c) in sum.iter_mut().zip(colour) {
                        *acc += c * weight;
                    }
                }
            }
            out.extend(sum.map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

fn shaded(colour: [f32; 3], shade: f32) -> [f32; 3] {
    colour.map(|c| (c + shade).clamp(0.0, 255.0))
}

/// Built-in image `index` of class "panda": `img_size × img_size × 3` RGB bytes (HWC),
/// a deterministic function of `index`. A white round face with black ears, black slanted eye
/// patches with white eye dots, a black nose and a small mouth, on one of six muted colours.
pub fn render_panda(index: usize, img_size: i64) -> Vec<u8> {
    let pose = Pose::of(index);
    let face = shaded([243.0, 241.0, 235.0], pose.shade);
    render(&pose, img_size, |x, y| {
        let mirrored = x.abs(); // the face is symmetric: draw the right half, mirror the left
        let mut colour = None;
        if in_circle(mirrored, y, (0.70, -0.68), 0.33) {
            colour = Some(PANDA_BLACK); // ears, partly behind the face
        }
        if in_ellipse(x, y, (0.0, 0.04), (1.0, 0.92), 0.0) {
            colour = Some(face);
        }
        if in_ellipse(mirrored, y, (0.38, 0.0), (0.20, 0.30), -0.6) {
            colour = Some(PANDA_BLACK); // eye patches, drooping outward
        }
        if in_circle(mirrored, y, (0.33, -0.05), 0.10) {
            colour = Some(EYE_WHITE);
        }
        if in_ellipse(x, y, (0.0, 0.32), (0.14, 0.09), 0.0) {
            colour = Some(PANDA_BLACK); // nose
        }
        if in_smile(mirrored, y, (0.075, 0.42), 0.075, 0.025) {
            colour = Some(PANDA_BLACK); // mouth
        }
        colour
    })
}

/// Built-in image `index` of class "red_panda" (label 1 of `builtin:pandas2`): the same pose
/// as [`render_panda`] but an orange face with white-rimmed ears, a white muzzle and brows,
/// rust tear marks and small dark eyes, and no eye patches.
pub fn render_red_panda(index: usize, img_size: i64) -> Vec<u8> {
    let pose = Pose::of(index);
    let fur = shaded(RED_PANDA_FUR, pose.shade);
    render(&pose, img_size, |x, y| {
        let mirrored = x.abs();
        let mut colour = None;
        if in_circle(mirrored, y, (0.70, -0.68), 0.33) {
            colour = Some(RED_PANDA_WHITE); // ear rims
        }
        if in_circle(mirrored, y, (0.70, -0.68), 0.22) {
            colour = Some(RED_PANDA_DARK);
        }
        if in_ellipse(x, y, (0.0, 0.04), (1.0, 0.92), 0.0) {
            colour = Some(fur);
        }
        if in_ellipse(mirrored, y, (0.40, 0.20), (0.08, 0.26), 0.25) {
            colour = Some(RED_PANDA_TEAR); // tear marks
        }
        if in_ellipse(x, y, (0.0, 0.40), (0.40, 0.30), 0.0) {
            colour = Some(RED_PANDA_WHITE); // muzzle
        }
        if in_ellipse(mirrored, y, (0.32, -0.34), (0.15, 0.09), 0.2) {
            colour = Some(RED_PANDA_WHITE); // brows
        }
        if in_circle(mirrored, y, (0.32, -0.08), 0.10) {
            colour = Some(RED_PANDA_EYE);
        }
        if in_ellipse(x, y, (0.0, 0.30), (0.14, 0.09), 0.0) {
            colour = Some(PANDA_BLACK); // nose
        }
        if in_smile(mirrored, y, (0.075, 0.40), 0.075, 0.025) {
            colour = Some(PANDA_BLACK); // mouth
        }
        colour
    })
}

// ---------------------------------------------------------------------------------------------
// The loader.

/// One batch, as handed to the trainer. Images stay `u8` on the CPU; the trainer scales them
/// (x / 255 · 2 − 1) on the device.
pub struct Batch {
    /// (B, 3, I, I), `Kind::Uint8`, CPU. B is below the batch size for the last batch of an
    /// epoch and when files of the batch failed to load.
    pub images: Tensor,
    /// (B), `Kind::Int64`.
    pub labels: Tensor,
    /// Dataset index of each image, in batch order.
    pub indices: Vec<usize>,
    /// Position of this batch in its epoch (0-based, counting skipped batches):
    /// `position + 1` is the `skip_batches` that resumes right after it.
    pub position: usize,
    /// Time the consumer blocked waiting for this batch.
    pub wait: Duration,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for a batch with no images (never handed out by [`Loader::epoch`]).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// State shared by a [`Loader`] and the producer threads of its epochs.
struct Shared {
    dataset: Arc<Dataset>,
    pool: rayon::ThreadPool,
    /// Decoded images, one cell per dataset index; empty when caching is off.
    cache: Vec<OnceLock<Arc<[u8]>>>,
    /// Images that failed to load once and are skipped from then on.
    failed: Vec<AtomicBool>,
    failed_count: AtomicUsize,
}

impl Shared {
    /// Image `i`, from the cache or decoded; `None` if it fails (warned about once) or failed
    /// before.
    fn image(&self, i: usize) -> Option<Arc<[u8]>> {
        if self.failed[i].load(Ordering::Relaxed) {
            return None;
        }
        if let Some(hit) = self.cache.get(i).and_then(OnceLock::get) {
            return Some(hit.clone());
        }
        match self.dataset.load(i) {
            Ok(pixels) => {
                let pixels: Arc<[u8]> = pixels.into();
                if let Some(cell) = self.cache.get(i) {
                    // Two epochs decoding the same image at once both succeed; one copy is kept.
                    let _ = cell.set(pixels.clone());
                }
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

    /// Decodes the images of `indices` on the pool; `None` when none of them loads.
    fn batch(&self, indices: &[usize], position: usize, stop: &AtomicBool) -> Option<Batch> {
        let images: Vec<(usize, Arc<[u8]>)> = self.pool.install(|| {
            indices
                .par_iter()
                .filter_map(|&i| {
                    // Once the consumer is gone, finish the batch without decoding anything.
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    self.image(i).map(|pixels| (i, pixels))
                })
                .collect()
        });
        if images.is_empty() {
            return None;
        }
        let side = self.dataset.img_size();
        let n = images.len();
        let mut pixels = Vec::with_capacity(n * images[0].1.len());
        for (_, image) in &images {
            pixels.extend_from_slice(image);
        }
        let indices: Vec<usize> = images.iter().map(|(i, _)| *i).collect();
        let labels: Vec<i64> = indices.iter().map(|&i| self.dataset.label(i)).collect();
        let images = Tensor::from_slice(&pixels)
            .view([n as i64, side, side, CHANNELS as i64]) // (B, I, I, 3)
            .permute([0, 3, 1, 2]) // (B, 3, I, I)
            .contiguous();
        Some(Batch { images, labels: Tensor::from_slice(&labels), indices, position, wait: Duration::ZERO })
    }
}

/// Shuffles a [`Dataset`] into batches and decodes them ahead of the trainer on its own rayon
/// pool, optionally caching every decoded image so that later epochs decode nothing.
pub struct Loader {
    shared: Arc<Shared>,
    batch_size: usize,
}

impl Loader {
    /// A loader of batches of `batch_size` images decoded by `num_workers` threads (0 counts as
    /// 1); with `cache`, decoded images are kept in memory (see [`memory_estimate`]).
    pub fn new(dataset: Arc<Dataset>, batch_size: usize, num_workers: usize, cache: bool) -> Result<Loader> {
        ensure!(batch_size > 0, "batch_size must be at least 1");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(num_workers.max(1))
            .thread_name(|i| format!("dit-data-{i}"))
            .build()
            .context("starting the data loader's worker threads")?;
        let len = dataset.len();
        let cache = if cache { (0..len).map(|_| OnceLock::new()).collect() } else { Vec::new() };
        let failed = (0..len).map(|_| AtomicBool::new(false)).collect();
        let shared = Arc::new(Shared { dataset, pool, cache, failed, failed_count: AtomicUsize::new(0) });
        Ok(Loader { shared, batch_size })
    }

    /// The data set it loads.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.shared.dataset
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches in one epoch, the last one partial: ceil(len / batch_size).
    pub fn batches_per_epoch(&self) -> usize {
        self.shared.dataset.len().div_ceil(self.batch_size)
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
        let (batch_size, producer_stop) = (self.batch_size, stop.clone());
        let producer = std::thread::Builder::new()
            .name("dit-data-producer".to_string())
            .spawn(move || produce(&shared, &order, batch_size, skip_batches, &sender, &producer_stop));
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

/// The producer thread of one epoch: decodes batch after batch into `sender`.
fn produce(
    shared: &Shared,
    order: &[usize],
    batch_size: usize,
    skip_batches: usize,
    sender: &SyncSender<Result<Batch>>,
    stop: &AtomicBool,
) {
    for (position, indices) in order.chunks(batch_size).enumerate().skip(skip_batches) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let message = match shared.batch(indices, position, stop) {
            Some(batch) => Ok(batch),
            None if stop.load(Ordering::Relaxed) => return,
            None if shared.failed_count.load(Ordering::Relaxed) >= shared.dataset.len() => Err(anyhow!(
                "none of the {} images of {} could be loaded (see the warnings above)",
                shared.dataset.len(),
                shared.dataset.origin
            )),
            None => continue,
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
