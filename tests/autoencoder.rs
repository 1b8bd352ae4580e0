//! The tiny autoencoders of src/autoencoder against the published PyTorch code (`taesd.py`,
//! imported in place from `../shared/models/taef2` by tests/python/autoencoder_reference.py):
//! parameter names and shapes of every variant, encoder and decoder outputs within 1e-4 in fp32
//! on the real taef2 weights with real photos and on seeded random weights of each other shape
//! (each also channels-last, `Encoder::channels_last`), and a pickle that would run code
//! refused without running it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{max_abs_diff, p, read, root};
use dit::autoencoder::{Decoder, Encoder, Variant};
use dit::checkpoint::{read_tensors, shapes, write_tensors};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The largest difference from PyTorch allowed in fp32.
const TOLERANCE: f64 = 1e-4;

/// The published code and taef2 weights, found by build.rs.
fn taef2_dir() -> PathBuf {
    PathBuf::from(option_env!("DIT_TAEF2").unwrap_or("../shared/models/taef2"))
}

fn photo_dir() -> PathBuf {
    PathBuf::from(option_env!("DIT_PHOTOS").unwrap_or("../shared/datasets/pandas"))
}

/// Runs the Python reference with `args`; returns its stdout, or panics with its stderr.
fn reference(args: &[&str]) -> String {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let out = Command::new(&python)
        .arg(root().join("tests/python/autoencoder_reference.py"))
        .args(["--taesd", p(&taef2_dir())])
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("cannot start the Python reference");
    assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Our encoder and decoder on the reference's inputs; returns the two max-abs differences
/// after checking that the outputs are far from trivial (no parity by saturation).
fn compare(enc: &Encoder, dec: &Decoder, want: &HashMap<String, Tensor>) -> (f64, f64) {
    let encoded = enc.encode(&want["image"]);
    let decoded = dec.decode(&want["latent"]);
    assert!(encoded.std(true).double_value(&[]) > 0.3, "the latents barely vary");
    let inside = decoded.gt(0.0).logical_and(&decoded.lt(1.0)).to_kind(Kind::Float).mean(Kind::Float);
    assert!(inside.double_value(&[]) > 0.5, "the decoded images are mostly clamped");
    (max_abs_diff(&encoded, &want["encoded"]), max_abs_diff(&decoded, &want["decoded"]))
}

fn assert_within(what: &str, (encoder, decoder): (f64, f64)) {
    eprintln!("{what}: max |Δ| encoder {encoder:.3e}, decoder {decoder:.3e}");
    assert!(encoder <= TOLERANCE && decoder <= TOLERANCE, "{what}: encoder {encoder}, decoder {decoder}");
}

#[test]
#[cfg_attr(not(dit_taef2), ignore = "the published autoencoder code is not on this machine")]
fn parameter_names_and_shapes_equal_the_published_state_dicts() {
    type Table = BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<i64>>>>;
    let published: Table = serde_json::from_str(&reference(&["keys"])).unwrap();
    assert_eq!(published.len(), Variant::ALL.len());
    for variant in Variant::ALL {
        let (enc_vs, dec_vs) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let _enc = Encoder::new(&enc_vs.root(), variant);
        let _dec = Decoder::new(&dec_vs.root(), variant);
        let table = &published[variant.name()];
        assert_eq!(shapes(&enc_vs), table["encoder"], "{variant} encoder");
        assert_eq!(shapes(&dec_vs), table["decoder"], "{variant} decoder");
    }
}

#[test]
#[cfg_attr(
    not(all(dit_taef2, dit_photos)),
    ignore = "the taef2 weights or the photo set are not on this machine"
)]
fn taef2_weights_match_pytorch_on_real_photos_from_pth_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let (enc_pth, dec_pth) = (taef2_dir().join("taef2_encoder.pth"), taef2_dir().join("taef2_decoder.pth"));
    let d = dir.path();
    reference(&[
        "photos",
        "--variant",
        "taef2",
        "--encoder",
        p(&enc_pth),
        "--decoder",
        p(&dec_pth),
        "--photos",
        p(&photo_dir()),
        "--count",
        "3",
        "--dir",
        p(d),
    ]);
    let want = read(&d.join("reference.safetensors"));
    assert_eq!(want["image"].size(), [3, 3, 64, 64]);
    let enc = Encoder::load(&enc_pth, Variant::Taef2, Device::Cpu).unwrap();
    let dec = Decoder::load(&dec_pth, Variant::Taef2, Device::Cpu).unwrap();
    assert_within("taef2 on 3 photos", compare(&enc, &dec, &want));
    let enc_cl = Encoder::load(&enc_pth, Variant::Taef2, Device::Cpu).unwrap().channels_last();
    let dec_cl = Decoder::load(&dec_pth, Variant::Taef2, Device::Cpu).unwrap().channels_last();
    assert_within("taef2 on 3 photos, channels-last", compare(&enc_cl, &dec_cl, &want));

    // A safetensors copy computes exactly what the .pth file does.
    let copy = |from: &Path, name: &str| {
        let to = d.join(name);
        write_tensors(&to, &read_tensors(from).unwrap()).unwrap();
        to
    };
    let enc_st = Encoder::load(&copy(&enc_pth, "enc.safetensors"), Variant::Taef2, Device::Cpu).unwrap();
    let dec_st = Decoder::load(&copy(&dec_pth, "dec.safetensors"), Variant::Taef2, Device::Cpu).unwrap();
    assert!(enc_st.encode(&want["image"]).equal(&enc.encode(&want["image"])));
    assert!(dec_st.decode(&want["latent"]).equal(&dec.decode(&want["latent"])));
}

/// Seeded random weights made and saved by PyTorch, loaded here from their `.pth` files: one
/// variant of each shape (taesdxl has taesd's, taesd3 taef1's), and taef2 again for random
/// GroupNorm scales and shifts, which the real weights only sample.
#[test]
#[cfg_attr(not(dit_taef2), ignore = "the published autoencoder code is not on this machine")]
fn random_weights_of_every_shape_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let variants = [Variant::Taesd, Variant::Taef1, Variant::Taef2];
    let mut args = vec!["random", "--seed", "0", "--dir", p(dir.path()), "--variants"];
    args.extend(variants.iter().map(|v| v.name()));
    reference(&args);
    for variant in variants {
        let d = dir.path().join(variant.name());
        let want = read(&d.join("reference.safetensors"));
        let enc = Encoder::load(&d.join("encoder.pth"), variant, Device::Cpu).unwrap();
        let dec = Decoder::load(&d.join("decoder.pth"), variant, Device::Cpu).unwrap();
        assert_within(&format!("random {variant}"), compare(&enc, &dec, &want));
        let (enc, dec) = (enc.channels_last(), dec.channels_last());
        assert_within(&format!("random {variant}, channels-last"), compare(&enc, &dec, &want));
    }
}

#[test]
#[cfg_attr(not(dit_taef2), ignore = "the published autoencoder code is not on this machine")]
fn a_pickle_that_would_run_a_command_is_refused_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    reference(&["evil", "--marker", p(&marker), "--dir", p(dir.path())]);
    let evil = dir.path().join("evil.pth");
    let err = Encoder::load(&evil, Variant::Taesd, Device::Cpu).expect_err("the evil file loaded");
    let err = err.to_string();
    assert!(err.starts_with(&format!("{}: not a readable .pth", evil.display())), "{err}");
    assert!(err.contains("posix.system") && !err.contains('\n'), "{err}");
    assert!(!marker.exists(), "the pickle's command ran");
}
