//! Training in an autoencoder's latent space end to end on tiny settings (64² images, 8²
//! latents of a seeded random `taesd`, one block): the store encoded once and reused, exact
//! resume, decoded previews and samples, the refusals that keep a checkpoint as it was, and
//! random flips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use dit::checkpoint::state;
use tch::Tensor;

/// 3 epochs of 2 steps (8 images, batch 4), EMA, random flips, a 5-step DDIM preview of 4
/// images after every epoch, in the latent space of taesd at 64² (8² latents, patch 2).
const LATENT: &str = r#"{
  "model": {"img_size": 64, "patch_size": 2, "autoencoder": "taesd"},
  "train": {"epoch": 3, "batch_size": 4, "ema_decay": 0.9, "hflip": true, "data_path": "imgs",
            "preview": {"sampler": "ddim", "steps": 5, "every_epochs": 1, "num": 4}}
}"#;

/// A folder with the images, the autoencoder and the config `latent.json`.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    latent_images(dir.path());
    autoencoder(dir.path(), 11);
    write_tiny_config(dir.path(), "latent.json", &[LATENT]);
    dir
}

/// The `train` arguments of a run of `latent.json` into `checkpoint`, then `extra`.
fn train_args(checkpoint: &str, extra: &[&str]) -> Vec<String> {
    let logdir = format!("{checkpoint}.logs");
    let base = ["--config", "latent.json", "--device", "cpu", "--seed", "3", "--autoencoder-dir", "ae"];
    let run = ["--checkpoint", checkpoint, "--logdir", &logdir];
    base.iter().chain(&run).chain(extra).map(|s| s.to_string()).collect()
}

fn train_bin(d: &Path, checkpoint: &str, extra: &[&str]) -> Output {
    let args = train_args(checkpoint, extra);
    run_bin(env!("CARGO_BIN_EXE_train"), d, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn train(d: &Path, checkpoint: &str, extra: &[&str]) -> String {
    let args = train_args(checkpoint, extra);
    let out = run_ok(env!("CARGO_BIN_EXE_train"), d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stores(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map_or(vec![], |r| r.map(|e| e.unwrap().path()).collect())
}

fn assert_same_state(a: &Path, b: &Path) {
    let (a, b) = (state::load(a).unwrap(), state::load(b).unwrap());
    assert_eq!(
        (a.meta.step, a.meta.epoch, a.meta.batch_in_epoch),
        (b.meta.step, b.meta.epoch, b.meta.batch_in_epoch)
    );
    for g in state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            assert!(t.equal(&b.group(g).unwrap()[name]), "{g}.{name} differs");
        }
    }
}

#[test]
fn a_latent_run_encodes_once_resumes_bit_for_bit_and_samples_decoded_images() {
    let dir = setup();
    let d = dir.path();
    let first = train(d, "one/w.safetensors", &["--max-steps", "5"]);
    assert!(first.contains("latents: encoding 8 images and their mirror images with taesd"), "{first}");
    assert!(first.contains("8 images (and their mirror images) as 4×8×8 float16"), "{first}");
    let store = stores(&d.join("one/latents"));
    assert_eq!(store.len(), 1, "{store:?}");

    // The same run in two starts: the second reuses the store and ends where the first did.
    let a = train(d, "two/w.safetensors", &["--max-steps", "2"]);
    assert!(a.contains("latents: encoding"), "{a}");
    let b = train(d, "two/w.safetensors", &["--max-steps", "5"]);
    assert!(b.contains("(reused)") && !b.contains("latents: encoding"), "{b}");
    assert!(b.contains("resuming from") && b.contains("at step 2"), "{b}");
    assert_same_state(
        &d.join("one/w.safetensors.state.safetensors"),
        &d.join("two/w.safetensors.state.safetensors"),
    );
    // Both stores were encoded alike.
    let other = stores(&d.join("two/latents"));
    assert_eq!(std::fs::read(&store[0]).unwrap(), std::fs::read(&other[0]).unwrap());

    // The state and the weight file record the autoencoder and the normalisation.
    let st = state::load(&d.join("one/w.safetensors.state.safetensors")).unwrap();
    let latent = st.meta.latent.expect("a latent run records its latents");
    assert_eq!(latent.autoencoder, "taesd");
    latent.stats.check(4, "state").unwrap();
    let meta = dit::checkpoint::read_metadata(&d.join("one/w.safetensors")).unwrap();
    let recorded: state::LatentMeta = serde_json::from_str(&meta[dit::checkpoint::LATENT_KEY]).unwrap();
    assert_eq!(recorded, latent);
    // The DiT works on 8² latents of 4 channels: patch 2 gives 16 tokens and a 4·2·2 patch.
    let w: std::collections::HashMap<String, Tensor> =
        dit::checkpoint::read_tensors(&d.join("one/w.safetensors")).unwrap().into_iter().collect();
    assert_eq!(w["position_emb"].size(), [1, 16, 16]);
    assert_eq!(w["conv.weight"].size(), [16, 4, 2, 2]);

    // Previews and samples are images of img_size², decoded.
    let preview = image::open(d.join("one/w.safetensors.preview.png")).unwrap();
    assert!(preview.width() >= 128 && preview.height() >= 128, "{}×{}", preview.width(), preview.height());
    for checkpoint in ["one/w.safetensors", "one/w.safetensors.state.safetensors"] {
        let out_dir = d.join(format!("samples-{}", checkpoint.len()));
        let args =
            ["--checkpoint", checkpoint, "--autoencoder-dir", "ae", "--sampler", "ddim", "--steps", "5"];
        let out = run_ok(
            env!("CARGO_BIN_EXE_sample"),
            d,
            &[&args[..], &["--num", "3", "--out-dir", p(&out_dir)]].concat(),
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("decoding with taesd"));
        for i in 0..3 {
            let img = image::open(out_dir.join(format!("{i:04}.png"))).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64));
        }
    }
}

#[test]
fn resuming_in_another_space_or_with_another_encoder_is_refused_and_nothing_changes() {
    let dir = setup();
    let d = dir.path();
    train(d, "w.safetensors", &["--max-steps", "1"]);
    let before = std::fs::read(d.join("w.safetensors.state.safetensors")).unwrap();

    let err = refusal(&train_bin(d, "w.safetensors", &["--autoencoder", "none", "--max-steps", "2"]));
    assert!(err.contains("trained in the latent space of taesd") && err.contains("pixel space"), "{err}");

    // Other encoder weights under the same name: the latents would mean something else.
    other_encoder(d);
    let err = refusal(&train_bin(d, "w.safetensors", &["--max-steps", "2"]));
    assert!(
        err.contains("taesd_encoder.pth: sha256")
            && err.contains("were trained on latents of an encoder of sha256"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("w.safetensors.state.safetensors")).unwrap(), before);

    // A pixel-space run resumed with an autoencoder.
    train(d, "pixel.safetensors", &["--autoencoder", "none", "--max-steps", "1"]);
    let err = refusal(&train_bin(d, "pixel.safetensors", &["--max-steps", "2"]));
    assert!(err.contains("in pixel space") && err.contains("latent space of taesd"), "{err}");

    // A damaged weight file is one line naming it.
    std::fs::write(d.join("ae/taesd_decoder.pth"), b"not a pickle").unwrap();
    let err = refusal(&train_bin(d, "fresh.safetensors", &["--max-steps", "1"]));
    assert!(err.contains("taesd_decoder.pth"), "{err}");
    assert!(!d.join("fresh.safetensors").exists());
}

#[test]
fn a_weights_only_latent_file_samples_only_with_its_normalisation() {
    let dir = setup();
    let d = dir.path();
    train(d, "w.safetensors", &["--max-steps", "1"]);
    std::fs::create_dir_all(d.join("alone")).unwrap();
    // .safetensors carries it in its metadata (model section included): it samples alone.
    std::fs::copy(d.join("w.safetensors"), d.join("alone/w.safetensors")).unwrap();
    let args =
        ["--autoencoder-dir", "ae", "--sampler", "ddim", "--steps", "2", "--num", "2", "--out", "s.png"];
    run_ok(env!("CARGO_BIN_EXE_sample"), d, &[&["--checkpoint", "alone/w.safetensors"][..], &args].concat());
    let grid = image::open(d.join("s.png")).unwrap();
    assert!(grid.width() > 128 && grid.height() >= 64, "two 64² tiles: {}×{}", grid.width(), grid.height());
    // .ot has no metadata: refused in one line naming the file.
    let tensors = dit::checkpoint::read_tensors(&d.join("w.safetensors")).unwrap();
    dit::checkpoint::write_tensors(&d.join("alone/w.ot"), &tensors).unwrap();
    let out = run_bin(
        env!("CARGO_BIN_EXE_sample"),
        d,
        &[&["--checkpoint", "alone/w.ot", "--config", "latent.json"][..], &args].concat(),
    );
    let err = refusal(&out);
    assert!(err.contains("alone/w.ot") && err.contains("no latent normalisation"), "{err}");
}

#[test]
fn hflip_mirrors_about_half_the_images_each_epoch_by_seed_epoch_and_index() {
    let dir = tempfile::tempdir().unwrap();
    latent_images(dir.path());
    let data = std::sync::Arc::new(dit::data::Dataset::open(p(&dir.path().join("imgs")), 64).unwrap());
    let loader = dit::data::Loader::new(data.clone(), 8, 1, dit::data::CACHE_ALL).unwrap().with_hflip(true);
    let plain = dit::data::Loader::new(data, 8, 1, dit::data::CACHE_ALL).unwrap();
    let mut mirrored = vec![];
    for epoch in 0..4 {
        let batch = loader.epoch(7, epoch, 0).next().unwrap().unwrap();
        let same = plain.epoch(7, epoch, 0).next().unwrap().unwrap();
        assert_eq!(batch.indices, same.indices, "flips change no order");
        for (row, &i) in batch.indices.iter().enumerate() {
            let (got, orig) = (batch.images.get(row as i64), same.images.get(row as i64));
            let flipped = dit::rng::flipped(7, epoch, i);
            let want = if flipped { orig.flip([2]) } else { orig };
            assert!(got.equal(&want), "epoch {epoch} image {i}");
            mirrored.push(flipped);
        }
        // The same epoch again draws the same flips.
        let again = loader.epoch(7, epoch, 0).next().unwrap().unwrap();
        assert!(again.images.equal(&batch.images));
    }
    let n = mirrored.iter().filter(|m| **m).count();
    assert!((6..=26).contains(&n), "{n} of 32 mirrored");
}

/// The published autoencoder code and weights (`../shared/models/taef2`, or `$DIT_TAEF2` when
/// built), as tests/autoencoder.rs finds them.
fn taef2_dir() -> PathBuf {
    let dir = PathBuf::from(option_env!("DIT_TAEF2").unwrap_or("../shared/models/taef2"));
    if dir.is_absolute() {
        dir
    } else {
        root().join(dir)
    }
}

#[test]
#[cfg_attr(not(dit_taef2), ignore = "the published autoencoder code is not on this machine")]
fn the_original_dit_at_the_latent_shape_and_the_published_decoder_draw_what_sample_draws() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    latent_images(d);
    let taef2 = taef2_dir();
    write_tiny_config(d, "latent.json", &[LATENT, r#"{"model": {"autoencoder": "taef2"}}"#]);
    let ae = ["--autoencoder-dir", p(&taef2)];
    let args = [
        &["--config", "latent.json", "--device", "cpu", "--checkpoint", "w.pth", "--max-steps", "3"][..],
        &ae,
    ]
    .concat();
    run_ok(
        env!("CARGO_BIN_EXE_train"),
        d,
        &[&args[..], &["--logdir", "logs", "--preview-every", "0"]].concat(),
    );
    // The normalisation the run recorded, as the Python side reads it.
    let st = state::load(&d.join("w.pth.state.safetensors")).unwrap();
    std::fs::write(d.join("stats.json"), serde_json::to_string(&st.meta.latent.unwrap().stats).unwrap())
        .unwrap();
    for seed in ["7", "1234"] {
        let config = d.join("latent.json");
        let draw = ["--config", p(&config), "--seed", seed, "--num", "2"];
        let py = d.join(format!("py{seed}.safetensors"));
        let decoder = taef2.join("taef2_decoder.pth");
        let (weights, stats) = (d.join("w.pth"), d.join("stats.json"));
        let python = ["sample", "--weights", p(&weights), "--out", p(&py), "--decoder", p(&decoder)];
        golden(&[&python[..], &["--stats", p(&stats), "--taesd", p(&taef2)], &draw].concat());
        // Raw weights (the .pth alone, as the original would load them) with the run's config.
        let rs = d.join(format!("rs{seed}.safetensors"));
        let rust = [
            "--checkpoint",
            "w.pth.state.safetensors",
            "--no-ema",
            "--sampler",
            "ddpm",
            "--tensor-out",
            p(&rs),
        ];
        run_ok(env!("CARGO_BIN_EXE_sample"), d, &[&rust[..], &ae, &["--device", "cpu"], &draw].concat());
        let (want, got) = (read(&py).remove("images").unwrap(), read(&rs).remove("images").unwrap());
        assert_eq!(got.size(), [2, 3, 64, 64]);
        let mean = (&got - &want).abs().mean(tch::Kind::Float).double_value(&[]);
        let max = max_abs_diff(&got, &want);
        println!("seed {seed}: mean abs diff {mean:e}, max {max:e}");
        assert!(mean <= 1e-4 && max <= 1e-2, "seed {seed}: mean abs diff {mean:e} (max {max:e})");
        // Not a pair of blank images: the decoded samples vary.
        assert!(want.std(true).double_value(&[]) > 0.05);
    }
}

/// Puts other (seed 12) encoder weights in `d/ae` under taesd's name.
fn other_encoder(d: &Path) {
    let other = tempfile::tempdir().unwrap();
    let folder = autoencoder(other.path(), 12);
    std::fs::copy(folder.join("taesd_encoder.pth"), d.join("ae/taesd_encoder.pth")).unwrap();
}

/// The latent stores in `dir` (no temporary files).
fn whole_stores(dir: &Path) -> Vec<PathBuf> {
    stores(dir).into_iter().filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect()
}

#[test]
fn a_start_that_will_be_refused_is_refused_before_any_encoding() {
    let dir = setup();
    let d = dir.path();
    write_tiny_config(d, "latent.json", &[LATENT, r#"{"model": {"label_num": 2}}"#]);
    train(d, "w.safetensors", &["--max-steps", "1"]);
    std::fs::remove_dir_all(d.join("latents")).unwrap();
    let before = std::fs::read(d.join("w.safetensors.state.safetensors")).unwrap();
    // The images now in two class folders: the saved run had one class.
    std::fs::create_dir_all(d.join("imgs/a")).unwrap();
    std::fs::create_dir_all(d.join("imgs/b")).unwrap();
    for i in 0..8 {
        let class = if i < 4 { "a" } else { "b" };
        std::fs::rename(d.join(format!("imgs/{i}.png")), d.join(format!("imgs/{class}/{i}.png"))).unwrap();
    }
    let out = train_bin(d, "w.safetensors", &["--max-steps", "2"]);
    let err = refusal(&out);
    assert!(err.contains("class"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("latents: encoding"));
    assert_eq!(whole_stores(&d.join("latents")), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read(d.join("w.safetensors.state.safetensors")).unwrap(), before);
    // A quality probe of too few images, on a fresh run.
    let probe = r#"{"model": {"label_num": 2}, "train": {"eval": {"every_epochs": 1, "num": 1}}}"#;
    write_tiny_config(d, "latent.json", &[LATENT, probe]);
    let out = train_bin(d, "fresh.safetensors", &["--max-steps", "1"]);
    assert!(refusal(&out).contains("train.eval.num"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("latents: encoding"));
    assert_eq!(whole_stores(&d.join("latents")), Vec::<PathBuf>::new());
}

#[test]
fn a_weights_only_start_from_another_autoencoders_latents_is_refused_naming_both() {
    let dir = setup();
    let d = dir.path();
    train(d, "w.safetensors", &["--max-steps", "1"]);
    std::fs::remove_file(d.join("w.safetensors.state.safetensors")).unwrap();
    let weights = std::fs::read(d.join("w.safetensors")).unwrap();
    // taesdxl has taesd's 4 latent channels, so only the record tells them apart.
    let err = refusal(&train_bin(d, "w.safetensors", &["--autoencoder", "taesdxl", "--max-steps", "2"]));
    assert!(err.contains("latent space of taesd,") && err.contains("latent space of taesdxl"), "{err}");
    // The same autoencoder with other encoder weights.
    other_encoder(d);
    let out = train_bin(d, "w.safetensors", &["--max-steps", "2"]);
    let err = refusal(&out);
    assert!(
        err.contains("taesd_encoder.pth: sha256") && err.contains("w.safetensors were trained on"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("latents: encoding"));
    assert_eq!(std::fs::read(d.join("w.safetensors")).unwrap(), weights);
}

#[test]
fn an_image_replaced_at_the_same_size_and_modification_time_is_re_encoded() {
    let dir = setup();
    let d = dir.path();
    train(d, "w.safetensors", &["--max-steps", "1"]);
    let old_store = whole_stores(&d.join("latents"));
    assert_eq!(old_store.len(), 1);
    let old_latent = dit::data::LatentStore::open(&old_store[0]).unwrap().item(0, false).unwrap().to_vec();
    // Another picture, padded after its end to the old file's size, renamed into place and
    // given the old modification time: size and mtime alone cannot tell.
    let target = d.join("imgs/0.png");
    let meta = std::fs::metadata(&target).unwrap();
    let mut png = std::io::Cursor::new(vec![]);
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 30, 30]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let mut bytes = png.into_inner();
    assert!(bytes.len() < meta.len() as usize);
    bytes.resize(meta.len() as usize, 0);
    let tmp = d.join("imgs.new");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(meta.modified().unwrap()).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!((after.len(), after.modified().unwrap()), (meta.len(), meta.modified().unwrap()));
    let out = train(d, "w.safetensors", &["--max-steps", "2"]);
    assert!(out.contains("latents: encoding") && !out.contains("(reused)"), "{out}");
    let new_store: Vec<PathBuf> =
        whole_stores(&d.join("latents")).into_iter().filter(|p| *p != old_store[0]).collect();
    assert_eq!(new_store.len(), 1);
    let new_latent = dit::data::LatentStore::open(&new_store[0]).unwrap().item(0, false).unwrap().to_vec();
    assert_ne!(new_latent, old_latent, "image 0's latents were not re-encoded");
}
