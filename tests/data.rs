//! The data module: odd and broken image files, the real photo set, the order of epochs, the
//! cache, and the built-in procedural data sets (and their preview grids).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dit::config::ClassLayout;
use dit::data::{
    render_panda, render_red_panda, Batch, Dataset, Loader, Shard, BUILTIN_LEN, BUILTIN_PANDAS,
    BUILTIN_PANDAS2, CACHE_ALL, CACHE_OFF,
};
use dit::rng::epoch_order;
use image::{ImageBuffer, Luma, Rgb, RgbImage, Rgba};
use tch::{Kind, Tensor};

const SIZE: i64 = 32;
const IMAGE_BYTES: usize = (SIZE * SIZE * 3) as usize;

// ---- helpers --------------------------------------------------------------------------------

/// CRC-32 (ISO-HDLC, as PNG chunks use), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];

fn ihdr(width: u32, height: u32, bit_depth: u8, colour_type: u8) -> Vec<u8> {
    let mut data = width.to_be_bytes().to_vec();
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    chunk(b"IHDR", &data)
}

/// zlib stream with one stored (uncompressed) block.
fn zlib_stored(raw: &[u8]) -> Vec<u8> {
    assert!(raw.len() < 65536);
    let len = raw.len() as u16;
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(raw);
    out.extend_from_slice(&adler32(raw).to_be_bytes());
    out
}

/// A 4×4 indexed-colour PNG, written by hand (the image crate does not write palettes).
fn palette_png() -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..4u8 {
        raw.push(0); // filter: none
        raw.extend((0..4u8).map(|x| (x + y) % 2));
    }
    let mut png = PNG_SIGNATURE.to_vec();
    png.extend(ihdr(4, 4, 8, 3));
    png.extend(chunk(b"PLTE", &[200, 30, 30, 30, 30, 200]));
    png.extend(chunk(b"IDAT", &zlib_stored(&raw)));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A well-formed PNG header declaring 100000×100000 RGB pixels (30 GB), with a tiny IDAT.
fn bomb_png() -> Vec<u8> {
    let mut png = PNG_SIGNATURE.to_vec();
    png.extend(ihdr(100_000, 100_000, 8, 2));
    png.extend(chunk(b"IDAT", &zlib_stored(&[0; 64])));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn encode(image: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn noise(width: u32, height: u32) -> RgbImage {
    ImageBuffer::from_fn(width, height, |x, y| {
        let h = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        Rgb([(h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8])
    })
}

/// Left third red, middle third green, right third blue.
fn thirds(width: u32, height: u32) -> RgbImage {
    ImageBuffer::from_fn(width, height, |x, _| match 3 * x / width {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    })
}

fn pixel(image: &[u8], side: i64, x: i64, y: i64) -> [u8; 3] {
    let at = ((y * side + x) * 3) as usize;
    [image[at], image[at + 1], image[at + 2]]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A folder of `n` small distinct PNGs named img_00.png, img_01.png, ….
fn numbered_folder(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let image = RgbImage::from_pixel(8, 8, Rgb([i as u8 * 20, 100, 255 - i as u8 * 20]));
        image.save(dir.path().join(format!("img_{i:02}.png"))).unwrap();
    }
    dir
}

fn collect(epoch: impl Iterator<Item = anyhow::Result<Batch>>) -> Vec<Batch> {
    epoch.map(|b| b.expect("batch")).collect()
}

fn indices(batches: &[Batch]) -> Vec<Vec<usize>> {
    batches.iter().map(|b| b.indices.clone()).collect()
}

/// The folder of real photos, read in place (never copied into the repository).
/// build.rs finds it (`DIT_PHOTOS`, `../shared/datasets/pandas`, `/work/shared/...`).
fn photo_folder() -> PathBuf {
    PathBuf::from(option_env!("DIT_PHOTOS").unwrap_or("../shared/datasets/pandas"))
}

// ---- files ----------------------------------------------------------------------------------

/// Names of the files that must load, and of those that must fail, in `odd_folder`.
const GOOD: [&str; 10] = [
    "one.png",
    "gray.png",
    "rgba.png",
    "deep16.png",
    "palette.png",
    "photo.JPG",
    "wide.png",
    "tall.jpeg",
    "liar.png",
    "lossless.webp",
];
const BAD: [&str; 4] = ["bad.png", "truncated.png", "bomb.png", "truncated.webp"];

fn odd_folder() -> tempfile::TempDir {
    use image::DynamicImage as D;
    use image::ImageFormat::{Jpeg, Png, WebP};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "one.png", &encode(&D::ImageRgb8(RgbImage::from_pixel(1, 1, Rgb([10, 200, 30]))), Png));
    let gray = ImageBuffer::from_fn(40, 30, |x, _| Luma([(x * 6) as u8]));
    write(d, "gray.png", &encode(&D::ImageLuma8(gray), Png));
    let rgba = ImageBuffer::from_fn(50, 50, |x, y| Rgba([x as u8 * 5, y as u8 * 5, 90, 128]));
    write(d, "rgba.png", &encode(&D::ImageRgba8(rgba), Png));
    let deep = ImageBuffer::from_fn(20, 20, |x, y| Rgb([x as u16 * 3000, y as u16 * 3000, 40_000]));
    write(d, "deep16.png", &encode(&D::ImageRgb16(deep), Png));
    write(d, "palette.png", &palette_png());
    write(d, "photo.JPG", &encode(&D::ImageRgb8(noise(64, 48)), Jpeg));
    write(d, "wide.png", &encode(&D::ImageRgb8(thirds(300, 200)), Png));
    write(d, "tall.jpeg", &encode(&D::ImageRgb8(thirds(60, 90)), Jpeg));
    write(d, "liar.png", &encode(&D::ImageRgb8(noise(33, 65)), Jpeg));
    write(d, "bad.png", b"this is not an image at all, just some garbage bytes \x00\x01\x02");
    let full = encode(&D::ImageRgb8(noise(64, 64)), Png);
    write(d, "truncated.png", &full[..full.len() / 2]);
    write(d, "bomb.png", &bomb_png());
    let webp = encode(&D::ImageRgb8(thirds(90, 60)), WebP);
    write(d, "lossless.webp", &webp);
    write(d, "truncated.webp", &webp[..webp.len() / 2]);
    write(d, "notes.txt", b"not picked up");
    dir
}

#[test]
fn odd_files_load_and_broken_ones_fail_naming_the_file() {
    let dir = odd_folder();
    let data = Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap();
    assert_eq!(data.len(), GOOD.len() + BAD.len(), "{}", data.describe());
    assert_eq!(data.class_names().len(), 1);
    let index_of = |name: &str| {
        (0..data.len()).find(|&i| data.path(i).unwrap().ends_with(name)).unwrap_or_else(|| panic!("{name}"))
    };
    for name in GOOD {
        let image = data.load(index_of(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(image.len(), IMAGE_BYTES, "{name}");
    }
    for name in BAD {
        let started = Instant::now();
        let err = data.load(index_of(name)).expect_err(name);
        let message = format!("{err:#}");
        assert!(message.contains(name), "{message}");
        assert!(err.to_string().contains(name), "top-level message names the file: {err}");
        assert!(!message.contains('\n'), "{message}");
        assert!(started.elapsed() < Duration::from_millis(500), "{name} took {:?}", started.elapsed());
    }
}

#[test]
fn colours_and_centre_crop_survive_decoding() {
    let dir = odd_folder();
    let data = Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap();
    let load = |name: &str| {
        let i = (0..data.len()).find(|&i| data.path(i).unwrap().ends_with(name)).unwrap();
        data.load(i).unwrap()
    };
    // 300×200: the centre 200×200 square is ¼ red, ½ green, ¼ blue.
    let wide = load("wide.png");
    assert_eq!(pixel(&wide, SIZE, SIZE / 2, SIZE / 2), [0, 255, 0]);
    assert_eq!(pixel(&wide, SIZE, 0, SIZE / 2), [255, 0, 0]);
    assert_eq!(pixel(&wide, SIZE, SIZE - 1, 0), [0, 0, 255]);
    assert_eq!(pixel(&wide, SIZE, 5, 16), [255, 0, 0]);
    // 60×90 portrait, JPEG: the crop keeps the whole width, so all three thirds remain.
    let tall = load("tall.jpeg");
    let [r, g, b] = pixel(&tall, SIZE, 2, SIZE / 2);
    assert!(r > 200 && g < 60 && b < 60, "{:?}", [r, g, b]);
    let [r, g, b] = pixel(&tall, SIZE, SIZE - 3, SIZE / 2);
    assert!(b > 200 && r < 60 && g < 60, "{:?}", [r, g, b]);
    // 1×1 is upscaled to a flat image.
    let one = load("one.png");
    assert!(one.chunks(3).all(|p| p == [10, 200, 30]));
    // Grayscale becomes three equal channels.
    assert!(load("gray.png").chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // The palette maps to its two colours (blended at most by the resize).
    let palette = load("palette.png");
    assert!(palette.chunks(3).all(|p| p[1] == 30 && p[0] as u32 + p[2] as u32 >= 225));
    // 16-bit: 40000/65535 ≈ 156 in the blue channel everywhere.
    assert!(load("deep16.png").chunks(3).all(|p| p[2].abs_diff(156) <= 1));
    // WebP (lossless), 90×60: the centre 60×60 square is ¼ red, ½ green, ¼ blue.
    let webp = load("lossless.webp");
    assert_eq!(pixel(&webp, SIZE, SIZE / 2, SIZE / 2), [0, 255, 0]);
    assert_eq!(pixel(&webp, SIZE, 0, SIZE / 2), [255, 0, 0]);
    assert_eq!(pixel(&webp, SIZE, SIZE - 1, SIZE / 2), [0, 0, 255]);
}

#[test]
fn an_image_already_at_size_is_passed_through_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let exact = noise(SIZE as u32, SIZE as u32);
    exact.save(dir.path().join("exact.png")).unwrap();
    let data = Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap();
    assert_eq!(data.load(0).unwrap(), exact.into_raw());
    assert!(data.load(1).is_err(), "index out of range is an error, not a panic");
}

#[test]
fn loader_skips_broken_files_and_covers_every_good_one_once() {
    let dir = odd_folder();
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap());
    let good: BTreeSet<usize> =
        (0..data.len()).filter(|&i| GOOD.iter().any(|name| data.path(i).unwrap().ends_with(name))).collect();
    let loader = Loader::new(data.clone(), 4, 2, CACHE_ALL).unwrap();
    for epoch in 0..2 {
        let batches = collect(loader.epoch(7, epoch, 0));
        let seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen.len(), good.len(), "each good image exactly once");
        assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), good);
        for batch in &batches {
            let n = batch.len() as i64;
            assert_eq!(batch.images.size(), [n, 3, SIZE, SIZE]);
            assert_eq!(batch.images.kind(), Kind::Uint8);
            assert_eq!(batch.labels.size(), [n]);
            assert_eq!(batch.labels.kind(), Kind::Int64);
        }
    }
}

#[test]
fn an_epoch_of_only_broken_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(dir.path(), &format!("broken_{i}.png"), b"garbage");
    }
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap());
    let loader = Loader::new(data, 2, 2, CACHE_OFF).unwrap();
    let results: Vec<_> = loader.epoch(0, 0, 0).collect();
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().err().unwrap();
    assert!(err.to_string().contains("none of the 5 images"), "{err}");
}

#[test]
fn batch_tensors_hold_the_loaded_pixels_channels_first() {
    let dir = odd_folder();
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), SIZE).unwrap());
    let loader = Loader::new(data.clone(), 3, 2, CACHE_OFF).unwrap();
    let batch = loader.epoch(1, 0, 0).next().unwrap().unwrap();
    for (k, &i) in batch.indices.iter().enumerate() {
        let hwc = batch.images.get(k as i64).permute([1, 2, 0]).contiguous();
        let mut bytes = vec![0u8; IMAGE_BYTES];
        hwc.view([-1]).copy_data(&mut bytes, IMAGE_BYTES);
        assert_eq!(bytes, data.load(i).unwrap());
        assert_eq!(batch.labels.int64_value(&[k as i64]), 0);
    }
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photo set is not on this machine")]
fn real_photo_set_loads_entirely() {
    let folder = photo_folder();
    let data = Arc::new(Dataset::open(folder.to_str().unwrap(), SIZE).unwrap());
    assert_eq!(data.len(), 300, "{}", data.describe());
    assert!(data.describe().starts_with("300 images in "), "{}", data.describe());
    let loader = Loader::new(data.clone(), 32, 2, CACHE_OFF).unwrap();
    assert_eq!(loader.batches_per_epoch(), 10);
    let batches = collect(loader.epoch(0, 0, 0));
    let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(sizes, [32, 32, 32, 32, 32, 32, 32, 32, 32, 12], "no photo may fail");
    let seen: BTreeSet<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(seen.len(), 300);
}

/// Runs `tests/python/data_reference.py` with the venv's Python (a missing venv fails the test).
fn data_reference(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/python/data_reference.py"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("cannot start the Python reference");
    assert!(out.status.success(), "data_reference.py {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Mean absolute difference (0–255 scale) of each image of `folder` at `size`, between this
/// loader and torchvision's `Resize(size, antialias=True) + CenterCrop(size)`.
fn differences_from_torchvision(folder: &Path, size: i64) -> Vec<f64> {
    let out = tempfile::tempdir().unwrap();
    let reference = out.path().join("reference.safetensors");
    data_reference(&["resize", folder.to_str().unwrap(), &size.to_string(), reference.to_str().unwrap()]);
    let images = Tensor::read_safetensors(&reference).unwrap().remove(0).1;
    let data = Dataset::open(folder.to_str().unwrap(), size).unwrap();
    assert_eq!(images.size(), [data.len() as i64, size, size, 3]);
    (0..data.len())
        .map(|i| {
            let ours = Tensor::from_slice(&data.load(i).unwrap()).view([size, size, 3]);
            (ours.to_kind(Kind::Float) - images.get(i as i64).to_kind(Kind::Float))
                .abs()
                .mean(Kind::Float)
                .double_value(&[])
        })
        .collect()
}

/// JPEGs with libjpeg warnings load as PIL loads them, and truncated ones are refused as PIL
/// refuses them: each file the test writes, against PIL + torchvision in `tests/python`.
#[test]
fn damaged_jpegs_load_or_fail_as_pil_decides() {
    let dir = tempfile::tempdir().unwrap();
    let px = dit::data::render_panda(3, 72);
    let mut clean = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut clean, 90)
        .encode(&px, 72, 72, image::ExtendedColorType::Rgb8)
        .unwrap();
    let (body, eoi) = clean.split_at(clean.len() - 2);
    let files: [(&str, Vec<u8>, bool); 6] = [
        ("a_clean.jpg", clean.clone(), true),
        ("b_stray4.jpg", [body, &[0; 4], eoi].concat(), true),
        ("c_stray64.jpg", [body, &[0; 64], eoi].concat(), true),
        ("d_garbage_after_eoi.jpg", [&clean[..], &[0x5a; 300]].concat(), true),
        ("e_truncated.jpg", clean[..clean.len() * 9 / 10].to_vec(), false),
        ("f_no_eoi.jpg", body.to_vec(), false),
    ];
    for (name, bytes, _) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let size = 32;
    let reference = dir.path().join("pil.safetensors");
    data_reference(&["pil", dir.path().to_str().unwrap(), &size.to_string(), reference.to_str().unwrap()]);
    let mut tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&reference).unwrap().into_iter().collect();
    let (images, loaded) = (tensors.remove("images").unwrap(), tensors.remove("loaded").unwrap());
    std::fs::remove_file(&reference).unwrap();
    let data = Dataset::open(dir.path().to_str().unwrap(), size).unwrap();
    assert_eq!(data.len(), files.len());
    for (i, (name, _, expected)) in files.iter().enumerate() {
        let pil_loads = loaded.int64_value(&[i as i64]) == 1;
        assert_eq!(pil_loads, *expected, "{name}: PIL's verdict is not what this test assumes");
        match data.load(i) {
            Ok(ours) => {
                assert!(pil_loads, "{name}: loaded here, refused by PIL");
                let ours = Tensor::from_slice(&ours).view([size, size, 3]).to_kind(Kind::Float);
                let diff = (ours - images.get(i as i64).to_kind(Kind::Float)).abs().mean(Kind::Float);
                let diff = diff.double_value(&[]);
                assert!(diff <= 2.0, "{name}: mean difference {diff:.3}/255 from PIL");
            }
            Err(e) => {
                let text = format!("{e:#}");
                assert!(!pil_loads, "{name}: PIL loads it, this loader says {text}");
                assert!(text.contains("truncated JPEG") && !text.contains('\n'), "{name}: {text}");
            }
        }
    }
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photo set is not on this machine")]
fn decoding_means_what_torchvision_resize_and_center_crop_mean() {
    let camera = tempfile::tempdir().unwrap();
    data_reference(&["large", photo_folder().to_str().unwrap(), camera.path().to_str().unwrap(), "3"]);
    // 256: the photos are resized as decoded; 64: most are first shrunk by 1/2 in the JPEG
    // decoder; the 4000×3000 photos at 256 by 1/4.
    for (folder, size) in [(photo_folder(), 256), (photo_folder(), 64), (camera.path().to_path_buf(), 256)] {
        let diffs = differences_from_torchvision(&folder, size);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let worst = diffs.iter().cloned().fold(0.0, f64::max);
        println!(
            "{} at {size}: {} images, mean |Δ| {mean:.3}/255, worst image {worst:.3}/255",
            folder.display(),
            diffs.len()
        );
        assert!(mean <= 2.0, "{} at {size}: mean difference {mean:.3}/255", folder.display());
        assert!(worst <= 4.0, "{} at {size}: an image differs by {worst:.3}/255", folder.display());
    }
}

// ---- order ----------------------------------------------------------------------------------

#[test]
fn epoch_order_is_a_permutation_fixed_by_seed_and_epoch() {
    let order = epoch_order(1000, 3, 5);
    assert_eq!(order.iter().copied().collect::<BTreeSet<_>>().len(), 1000);
    assert_eq!(order, epoch_order(1000, 3, 5));
    assert_ne!(order, epoch_order(1000, 3, 6));
    assert_ne!(order, epoch_order(1000, 4, 5));
    assert_ne!(order, (0..1000).collect::<Vec<_>>());
    assert!(epoch_order(0, 1, 1).is_empty());
    assert_eq!(epoch_order(1, 1, 1), [0]);
}

#[test]
fn epochs_are_deterministic_keep_the_last_partial_batch_and_resume_exactly() {
    let dir = numbered_folder(10);
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), 8).unwrap());
    let loader = Loader::new(data, 4, 2, CACHE_ALL).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let full = collect(loader.epoch(42, 1, 0));
    assert_eq!(full.iter().map(Batch::len).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(full.iter().map(|b| b.position).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(indices(&full), indices(&collect(loader.epoch(42, 1, 0))));
    assert_ne!(indices(&full), indices(&collect(loader.epoch(42, 2, 0))));
    for k in 0..=3 {
        let tail = collect(loader.epoch(42, 1, k));
        assert_eq!(indices(&tail), indices(&full[k..]), "skip {k}");
        assert_eq!(tail.first().map(|b| b.position), (k < 3).then_some(k));
    }
    assert!(collect(loader.epoch(42, 1, 99)).is_empty());
}

#[test]
fn the_cache_serves_later_epochs_without_the_files() {
    let dir = numbered_folder(6);
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), 8).unwrap());
    let cached = Loader::new(data.clone(), 4, 2, CACHE_ALL).unwrap();
    let uncached = Loader::new(data, 4, 2, CACHE_OFF).unwrap();
    let first = collect(cached.epoch(0, 0, 0));
    collect(uncached.epoch(0, 0, 0));
    for i in 0..6 {
        std::fs::remove_file(dir.path().join(format!("img_{i:02}.png"))).unwrap();
    }
    let again = collect(cached.epoch(0, 0, 0));
    assert_eq!(indices(&first), indices(&again));
    for (a, b) in first.iter().zip(&again) {
        assert!(a.images.equal(&b.images));
    }
    // Without the cache the files are read again: all gone, so the epoch is an error.
    assert!(uncached.epoch(0, 1, 0).any(|b| b.is_err()));
}

#[test]
fn a_partial_cache_holds_the_first_images_and_changes_no_batch() {
    let dir = numbered_folder(6);
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), 8).unwrap());
    // 8×8×3 pixels and a state byte: 193 bytes an image; 600 bytes hold 3.
    let partial = Loader::new(data.clone(), 4, 2, 600).unwrap();
    assert_eq!(partial.cache_summary(), "3 of 6 images, 579 B");
    assert_eq!(Loader::new(data.clone(), 4, 2, CACHE_ALL).unwrap().cache_summary(), "6 of 6 images, 1.1 KiB");
    assert_eq!(Loader::new(data.clone(), 4, 2, CACHE_OFF).unwrap().cache_summary(), "0 of 6 images, 0 B");
    let uncached = Loader::new(data, 4, 2, CACHE_OFF).unwrap();
    let (first, reference) = (collect(partial.epoch(3, 0, 0)), collect(uncached.epoch(3, 0, 0)));
    assert_eq!(indices(&first), indices(&reference));
    for (a, b) in first.iter().zip(&reference) {
        assert!(a.images.equal(&b.images) && a.labels.equal(&b.labels));
    }
    for i in 0..6 {
        std::fs::remove_file(dir.path().join(format!("img_{i:02}.png"))).unwrap();
    }
    // With the files gone, exactly the cached images (indices 0, 1, 2) are still served.
    let served: BTreeSet<usize> =
        collect(partial.epoch(3, 1, 0)).iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(served, BTreeSet::from([0, 1, 2]));
}

#[test]
fn files_that_vanish_after_the_scan_are_skipped_and_the_epoch_goes_on() {
    let dir = numbered_folder(8);
    let data = Arc::new(Dataset::open(dir.path().to_str().unwrap(), 8).unwrap());
    std::fs::remove_file(dir.path().join("img_03.png")).unwrap();
    std::fs::write(dir.path().join("img_05.png"), b"broken after the scan").unwrap();
    let loader = Loader::new(data.clone(), 3, 2, CACHE_OFF).unwrap();
    for epoch in 0..2 {
        let seen: BTreeSet<usize> =
            collect(loader.epoch(0, epoch, 0)).iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, BTreeSet::from([0, 1, 2, 4, 6, 7]), "epoch {epoch}");
    }
}

#[test]
fn dropping_an_epoch_midway_returns_promptly() {
    let data = Arc::new(Dataset::open(BUILTIN_PANDAS, 32).unwrap());
    let loader = Loader::new(data, 8, 2, CACHE_OFF).unwrap();
    let mut epoch = loader.epoch(0, 0, 0);
    let first = epoch.next().unwrap().unwrap();
    assert_eq!(first.len(), 8);
    let started = Instant::now();
    drop(epoch);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // An epoch dropped before its first batch, too.
    drop(loader.epoch(0, 1, 0));
}

#[test]
fn zero_batch_size_is_an_error() {
    let data = Arc::new(Dataset::open(BUILTIN_PANDAS, 8).unwrap());
    assert!(Loader::new(data, 0, 2, CACHE_OFF).is_err());
}

// ---- folders --------------------------------------------------------------------------------

fn open_error(path: &str) -> String {
    let err = Dataset::open(path, SIZE).err().unwrap_or_else(|| panic!("{path} opened"));
    let message = format!("{err:#}");
    assert!(message.contains(path), "{message}");
    assert!(!message.contains('\n'), "{message}");
    message
}

#[test]
fn bad_folders_give_one_line_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(open_error(empty.to_str().unwrap()).contains("no image files"));
    let missing = root.join("missing");
    assert!(open_error(missing.to_str().unwrap()).contains("does not exist"));
    let texts = root.join("texts");
    std::fs::create_dir(&texts).unwrap();
    write(&texts, "readme.txt", b"hello");
    assert!(open_error(texts.to_str().unwrap()).contains("no image files"));
    let file = write(root, "file.png", b"x");
    assert!(open_error(file.to_str().unwrap()).contains("not a folder"));
    assert!(Dataset::open(BUILTIN_PANDAS, 0).is_err());
}

#[test]
fn sub_folders_are_classes() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("zebra", 2), ("aardvark", 3)] {
        let sub = dir.path().join(class);
        std::fs::create_dir(&sub).unwrap();
        for i in 0..n {
            RgbImage::from_pixel(4, 4, Rgb([i, 0, 0])).save(sub.join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("no_images")).unwrap();
    RgbImage::from_pixel(4, 4, Rgb([0, 0, 0])).save(dir.path().join("loose.png")).unwrap();
    let data = Dataset::open(dir.path().to_str().unwrap(), 4).unwrap();
    assert_eq!(data.class_names(), ["aardvark", "zebra"]);
    assert_eq!(data.len(), 5, "the loose file is ignored");
    let labels: Vec<i64> = (0..5).map(|i| data.label(i).unwrap()).collect();
    assert_eq!(labels, [0, 0, 0, 1, 1]);
    assert_eq!(data.label(5), None, "no label past the end");
    assert!(data.describe().contains("2 classes"), "{}", data.describe());

    let single = numbered_folder(3);
    let data = Dataset::open(single.path().to_str().unwrap(), 4).unwrap();
    let name = single.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(data.class_names(), [name]);
    assert!(data.describe().ends_with("(1 class)"), "{}", data.describe());
}

/// A tree with images at several depths, hidden entries, a link back up the tree, a link to
/// a sibling folder, a broken link, and a non-image file:
///
/// ```text
/// top.png  notes.txt  .hidden/h.png  shard_a/{a0.png, .a1.png, deep/d0.jpg, up -> ..}
/// shard_b/b0.webp  again -> shard_a  dangling -> nowhere
/// ```
fn shard_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let png = |path: PathBuf| RgbImage::from_pixel(4, 4, Rgb([9, 9, 9])).save(path).unwrap();
    for folder in [".hidden", "shard_a/deep", "shard_b"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    png(root.join("top.png"));
    png(root.join(".hidden/h.png"));
    png(root.join("shard_a/a0.png"));
    png(root.join("shard_a/.a1.png"));
    RgbImage::from_pixel(4, 4, Rgb([9, 9, 9])).save(root.join("shard_a/deep/d0.jpg")).unwrap();
    RgbImage::from_pixel(4, 4, Rgb([9, 9, 9])).save(root.join("shard_b/b0.webp")).unwrap();
    write(root, "notes.txt", b"not an image");
    std::os::unix::fs::symlink("..", root.join("shard_a/up")).unwrap();
    std::os::unix::fs::symlink("shard_a", root.join("again")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    dir
}

fn relative_paths(data: &Dataset, root: &Path) -> Vec<String> {
    (0..data.len()).map(|i| data.path(i).unwrap().strip_prefix(root).unwrap().display().to_string()).collect()
}

#[test]
fn classes_none_reads_every_image_at_any_depth_once() {
    let tree = shard_tree();
    let data = Dataset::open_as(tree.path().to_str().unwrap(), 4, ClassLayout::None).unwrap();
    // shard_a is read once, through the link "again" that sorts before it; the link back up
    // ("up") does not loop; hidden entries and the broken link are skipped.
    assert_eq!(
        relative_paths(&data, tree.path()),
        ["again/a0.png", "again/deep/d0.jpg", "shard_b/b0.webp", "top.png"]
    );
    assert!((0..data.len()).all(|i| data.label(i) == Some(0)));
    assert_eq!(data.class_names().len(), 1);
    assert!(data.scan_warnings().is_empty(), "{:?}", data.scan_warnings());
    for i in 0..data.len() {
        assert_eq!(data.load(i).unwrap().len(), 4 * 4 * 3);
    }
}

#[test]
fn classes_folders_take_each_class_folder_at_any_depth() {
    let tree = shard_tree();
    // (A link from a class folder up to the root would put the root's images in that class.)
    std::fs::remove_file(tree.path().join("shard_a/up")).unwrap();
    let data = Dataset::open_as(tree.path().to_str().unwrap(), 4, ClassLayout::Folders).unwrap();
    assert_eq!(data.class_names(), ["again", "shard_a", "shard_b"]);
    let paths = relative_paths(&data, tree.path());
    let labels: Vec<i64> = (0..data.len()).map(|i| data.label(i).unwrap()).collect();
    // Each class folder is read on its own, so shard_a's images appear under both names.
    assert_eq!(
        paths,
        ["again/a0.png", "again/deep/d0.jpg", "shard_a/a0.png", "shard_a/deep/d0.jpg", "shard_b/b0.webp"]
    );
    assert_eq!(labels, [0, 0, 1, 1, 2]);
    assert!(data.scan_warnings().iter().any(|w| w.contains("ignoring 1 image file(s) directly in")));
}

// ---- built-in data sets ---------------------------------------------------------------------

/// Mean colour of the central half (the face) of a `SIZE`² image.
fn centre_mean_colour(image: &[u8]) -> [f64; 3] {
    let (lo, hi) = (SIZE / 4, 3 * SIZE / 4);
    let mut sum = [0.0; 3];
    for y in lo..hi {
        for x in lo..hi {
            for (acc, c) in sum.iter_mut().zip(pixel(image, SIZE, x, y)) {
                *acc += c as f64;
            }
        }
    }
    sum.map(|s| s / ((hi - lo) * (hi - lo)) as f64)
}

#[test]
fn builtin_pandas_are_deterministic_varied_and_look_like_pandas() {
    let data = Dataset::open(BUILTIN_PANDAS, SIZE).unwrap();
    assert_eq!(data.len(), BUILTIN_LEN);
    assert_eq!(data.class_names(), ["panda"]);
    assert_eq!(data.label(4095), Some(0));
    assert_eq!(data.label(BUILTIN_LEN), None);
    let first = data.load(0).unwrap();
    assert_eq!(first.len(), IMAGE_BYTES);
    assert_eq!(first, data.load(0).unwrap());
    assert_eq!(first, render_panda(0, SIZE));
    let distinct: BTreeSet<Vec<u8>> = (0..32).map(|i| data.load(i).unwrap()).collect();
    assert_eq!(distinct.len(), 32);
    for i in [0, 1, 17, 4095] {
        let image = data.load(i).unwrap();
        // The central half of the image holds the face: black patches and a white face.
        let centre: Vec<[u8; 3]> = (8..24)
            .flat_map(|y| (8..24).map(move |x| (x, y)))
            .map(|(x, y)| pixel(&image, SIZE, x, y))
            .collect();
        assert!(centre.iter().any(|p| p.iter().all(|&c| c < 60)), "panda {i} has no dark pixels");
        assert!(centre.iter().any(|p| p.iter().all(|&c| c > 220)), "panda {i} has no white pixels");
    }
    assert!(data.load(BUILTIN_LEN).is_err());
}

#[test]
fn builtin_pandas2_has_two_visibly_different_classes() {
    let data = Dataset::open(BUILTIN_PANDAS2, SIZE).unwrap();
    assert_eq!(data.len(), BUILTIN_LEN);
    assert_eq!(data.class_names(), ["panda", "red_panda"]);
    assert_eq!((0..4).map(|i| data.label(i).unwrap()).collect::<Vec<_>>(), [0, 1, 0, 1]);
    assert_eq!(data.label(BUILTIN_LEN + 1), None);
    assert_eq!(data.load(1).unwrap(), render_red_panda(1, SIZE));
    assert_eq!(data.load(2).unwrap(), render_panda(2, SIZE));
    let class_mean = |label: usize| {
        let means: Vec<[f64; 3]> =
            (0..64).filter(|i| i % 2 == label).map(|i| centre_mean_colour(&data.load(i).unwrap())).collect();
        [0, 1, 2].map(|c| means.iter().map(|m| m[c]).sum::<f64>() / means.len() as f64)
    };
    let (panda, red) = (class_mean(0), class_mean(1));
    // Red panda faces are orange, far more red than blue; panda faces are black and white.
    assert!(red[0] - red[2] > panda[0] - panda[2] + 60.0, "panda {panda:?} red panda {red:?}");
}

/// Tiles 16 images of side `side` into a 4×4 grid PNG.
fn write_grid(path: &Path, side: u32, render: impl Fn(usize) -> Vec<u8>) {
    let mut grid = RgbImage::new(4 * side, 4 * side);
    for k in 0..16u32 {
        let tile = RgbImage::from_raw(side, side, render(k as usize)).unwrap();
        image::imageops::replace(&mut grid, &tile, ((k % 4) * side) as i64, ((k / 4) * side) as i64);
    }
    grid.save(path).unwrap();
}

#[test]
fn builtin_preview_images_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let pandas2 = Dataset::open(BUILTIN_PANDAS2, 64).unwrap();
    type Render<'a> = &'a dyn Fn(usize) -> Vec<u8>;
    let previews: [(&str, u32, Render); 3] = [
        ("builtin_pandas_preview.png", 64, &|i| render_panda(i, 64)),
        ("builtin_pandas2_preview.png", 64, &|i| pandas2.load(i).unwrap()),
        ("builtin_pandas_preview_32.png", 32, &|i| render_panda(i, 32)),
    ];
    for (name, side, render) in previews {
        let path = dir.path().join(name);
        write_grid(&path, side, render);
        // The file reads back as the 4×4 grid of the first 16 images, pixel for pixel.
        let grid = image::open(&path).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8();
        assert_eq!(grid.dimensions(), (4 * side, 4 * side), "{name}");
        for k in 0..16u32 {
            let tile = image::imageops::crop_imm(&grid, (k % 4) * side, (k / 4) * side, side, side);
            assert_eq!(tile.to_image().into_raw(), render(k as usize), "{name}: image {k}");
        }
    }
}

/// FNV-1a, to compare many bytes with a number printed once.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

#[test]
fn builtin_images_are_the_same_as_before_the_data_module_was_split() {
    // Printed by the code before the data module became a folder of files: the built-in images, and so the
    // quick start's training, must not change by a single byte.
    let mut both = Vec::new();
    for i in 0..8 {
        both.extend(render_panda(i, 32));
        both.extend(render_red_panda(i, 32));
    }
    assert_eq!(fnv1a(&both), 0x0c53_cc01_59c8_53a6);
    let pandas2 = Dataset::open(BUILTIN_PANDAS2, 16).unwrap();
    let loaded: Vec<u8> = [0, 1, 2, 3, 4095].into_iter().flat_map(|i| pandas2.load(i).unwrap()).collect();
    assert_eq!(fnv1a(&loaded), 0xeeec_c329_cb39_cf19);
    let order: Vec<u8> = epoch_order(1000, 7, 2).iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
    assert_eq!(fnv1a(&order), 0x8a11_5dbe_3e60_1d6d);
}

#[test]
fn shards_split_each_global_batch_and_take_every_step() {
    // 4096 images in global batches of 3 × 100: 13 full ones, then 196 images, which rank 0
    // and rank 1 share (100 + 96) and rank 2 gets none of, as an empty batch.
    let data = Arc::new(Dataset::open(BUILTIN_PANDAS, 8).unwrap());
    let whole = collect(Loader::new(data.clone(), 300, 2, CACHE_OFF).unwrap().epoch(9, 1, 0));
    let shards: Vec<Vec<Batch>> = (0..3)
        .map(|rank| {
            let loader = Loader::new(data.clone(), 100, 1, CACHE_OFF)
                .unwrap()
                .sharded(Shard { rank, world: 3 })
                .unwrap();
            assert_eq!((loader.batches_per_epoch(), loader.global_batch_size()), (14, 300));
            collect(loader.epoch(9, 1, 0))
        })
        .collect();
    assert_eq!(whole.len(), 14);
    for (p, global) in whole.iter().enumerate() {
        let parts: Vec<&Batch> = shards.iter().map(|s| &s[p]).collect();
        let joined: Vec<usize> = parts.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(joined, global.indices, "global batch {p}");
        for (rank, b) in parts.iter().enumerate() {
            assert_eq!((b.position, b.global_len), (p, global.len()));
            let first = (rank * 100).min(global.len());
            assert_eq!(b.slots, (first..first + b.len()).collect::<Vec<_>>());
            assert_eq!(b.images.size()[0], b.len() as i64);
        }
    }
    assert_eq!(shards[2][13].len(), 0);
    assert_eq!(shards[1][13].len(), 96);
    // Resuming inside the epoch skips global batches.
    let tail = collect(
        Loader::new(data, 100, 1, CACHE_OFF)
            .unwrap()
            .sharded(Shard { rank: 1, world: 3 })
            .unwrap()
            .epoch(9, 1, 12),
    );
    assert_eq!(indices(&tail), indices(&shards[1][12..]));
}
