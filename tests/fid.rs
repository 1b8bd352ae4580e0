//! FID and KID against pytorch-fid and torch-fidelity (tests/python/fid_reference.py), with no
//! download: pytorch-fid's own network gets seeded random weights whose batch norms are
//! calibrated on the shared photos, saved as its published file is, and loaded here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{p, run_bin, run_ok};

use dit::data::Dataset;
use dit::quality::fid::{frechet_distance, Statistics};
use dit::quality::inception::{Inception, Layout};
use dit::quality::kid::{kid, KidOptions};
use dit::quality::{self, inception_files};
use tch::{Device, Kind, Tensor};

/// Largest difference accepted between this network's features in pytorch-fid's layout (NCHW)
/// and pytorch-fid's.
const FEATURE_TOLERANCE: f64 = 1e-4;

/// Largest difference accepted between the default channels-last features and the NCHW ones:
/// float32 sums of the same terms added in another order. pytorch-fid's own features of the
/// same photos at 299² move by 7e-5 between 1 and 2 threads (these random weights' features
/// reach 41; the published network's are smaller); measured here 1.2e-4 at 299², 4.5e-5 at 64².
const LAYOUT_TOLERANCE: f64 = 2.5e-4;

fn photo_dir() -> PathBuf {
    PathBuf::from(option_env!("DIT_PHOTOS").unwrap_or("../shared/datasets/pandas"))
}

/// Runs tests/python/fid_reference.py with `args`; returns its stdout.
fn reference(args: &[&str]) -> String {
    common::python_script("fid_reference.py", args)
}

/// The calibrated random weights, made once per test process: (folder, zip file, legacy file).
fn weights() -> &'static (PathBuf, PathBuf, PathBuf) {
    static MADE: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (zip, legacy) = (dir.join(inception_files::FILE), dir.join("legacy.pth"));
        reference(&[
            "weights",
            "--photos",
            p(&photo_dir()),
            "--seed",
            "0",
            "--out",
            p(&zip),
            "--legacy",
            p(&legacy),
        ]);
        (dir, zip, legacy)
    })
}

/// `count` photos, resized and cropped to `side` as training does, as (N, 3, S, S) uint8.
fn photos(side: i64, count: usize, skip: usize) -> Tensor {
    let data = Dataset::open(p(&photo_dir()), side).unwrap();
    let chosen: Vec<usize> =
        quality::choose(&data, usize::MAX, None).unwrap().into_iter().skip(skip).take(count).collect();
    quality::load_pixels(&data, &chosen).unwrap()
}

fn save(path: &Path, name: &str, t: &Tensor) {
    Tensor::write_safetensors(&[(name, t.contiguous())], path).unwrap();
}

fn load(path: &Path, name: &str) -> Tensor {
    Tensor::read_safetensors(path).unwrap().into_iter().find(|(n, _)| n == name).unwrap().1
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photos are not on this machine")]
fn pool_features_match_pytorch_fid_on_photos_at_several_sizes() {
    let (dir, zip, legacy) = weights();
    let net = Inception::load(zip, Device::Cpu).unwrap().with_layout(Layout::Nchw);
    let fast = Inception::load(zip, Device::Cpu).unwrap();
    let from_legacy = Inception::load(legacy, Device::Cpu).unwrap().with_layout(Layout::Nchw);
    // 299 goes in as it is; the others are resized up and down, as pytorch-fid resizes them.
    for side in [64, 299, 342] {
        let images = photos(side, 6, 10);
        let (input, output) =
            (dir.join(format!("images{side}.safetensors")), dir.join(format!("features{side}.safetensors")));
        save(&input, "images", &images);
        reference(&["features", "--weights", p(zip), "--images", p(&input), "--out", p(&output)]);
        let expected = load(&output, "features");
        let ours = net.features(&(images.to_kind(Kind::Float) / 255.0));
        assert_eq!(ours.size(), [images.size()[0], 2048]);
        let diff = max_abs(&ours, &expected);
        let layout = max_abs(&fast.features(&(images.to_kind(Kind::Float) / 255.0)), &expected);
        eprintln!(
            "side {side}: NCHW features within {diff:.2e} of pytorch-fid's, channels-last {layout:.2e}"
        );
        assert!(diff <= FEATURE_TOLERANCE, "side {side}: features differ by {diff}");
        assert!(layout <= LAYOUT_TOLERANCE, "side {side}: channels-last features differ by {layout}");
        assert_eq!(max_abs(&ours, &from_legacy.features(&(images.to_kind(Kind::Float) / 255.0))), 0.0);
        // Calibrated, the features tell the photos apart (uncalibrated they would agree to 1e-8).
        let spread = expected.std_dim(0, true, false).mean(Kind::Float).double_value(&[]);
        let scale = expected.abs().mean(Kind::Float).double_value(&[]);
        assert!(
            spread > 0.05 * scale,
            "side {side}: features barely differ across photos ({spread} of {scale})"
        );
    }
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photos are not on this machine")]
fn fid_and_kid_match_pytorch_fid_and_torch_fidelity_on_the_same_features() {
    let (dir, zip, _) = weights();
    let net = Inception::load(zip, Device::Cpu).unwrap();
    let features = |skip| net.features(&(photos(64, 48, skip).to_kind(Kind::Float) / 255.0));
    let (a, b) = (features(0), features(100));
    let (fa, fb) = (dir.join("fid_a.safetensors"), dir.join("fid_b.safetensors"));
    save(&fa, "features", &a);
    save(&fb, "features", &b);

    let ours = frechet_distance(&Statistics::of(&a).unwrap(), &Statistics::of(&b).unwrap()).unwrap();
    let theirs: f64 = reference(&["fid", "--a", p(&fa), "--b", p(&fb)]).trim().parse().unwrap();
    assert!(theirs > 0.0, "pytorch-fid's FID {theirs}");
    assert!(((ours - theirs) / theirs).abs() <= 1e-5, "FID {ours} against pytorch-fid's {theirs}");

    let opts = KidOptions { subsets: 1, subset_size: 48 };
    let ours = kid(&a, &b, &opts, 0).unwrap().mean;
    let theirs: f64 = reference(&["kid", "--a", p(&fa), "--b", p(&fb)]).trim().parse().unwrap();
    assert!((ours - theirs).abs() <= 1e-6, "KID {ours} against torch-fidelity's {theirs}");
    assert!(ours.abs() > 1e-5, "KID {ours}: too small for the comparison to mean anything");
}

#[test]
fn a_pickle_that_would_run_a_command_is_refused_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let (marker, evil) = (dir.path().join("ran"), dir.path().join(inception_files::FILE));
    reference(&["evil", "--marker", p(&marker), "--out", p(&evil)]);
    let err = Inception::load(&evil, Device::Cpu).err().expect("the evil file loaded");
    let err = format!("{err:#}");
    assert!(err.contains(p(&evil)) && err.contains("posix.system") && !err.contains('\n'), "{err}");
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photos are not on this machine")]
fn a_missing_an_extra_or_a_misshapen_key_is_refused_naming_it() {
    let (_, zip, legacy) = weights();
    // A legacy file cut short (a download interrupted) is one line naming it.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join(inception_files::FILE);
    let bytes = std::fs::read(legacy).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", Inception::load(&cut, Device::Cpu).err().expect("half a file loaded"));
    assert!(
        err.starts_with(&format!("{}: not a readable .pth", cut.display())) && !err.contains('\n'),
        "{err}"
    );
    let entries = dit::checkpoint::read_tensors(zip).unwrap();
    let without = |name: &str| {
        entries.iter().filter(|(n, _)| n != name).map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    };
    let err = format!(
        "{:#}",
        Inception::from_entries(without("Mixed_6c.branch7x7_2.bn.running_var"), Device::Cpu).err().unwrap()
    );
    assert_eq!(err, "missing key Mixed_6c.branch7x7_2.bn.running_var");
    let err = format!("{:#}", Inception::from_entries(without("fc.bias"), Device::Cpu).err().unwrap());
    assert_eq!(err, "missing key fc.bias");
    // num_batches_tracked may be absent, as in files saved before PyTorch 0.4.1.
    let slim = entries.iter().filter(|(n, _)| !n.ends_with("num_batches_tracked"));
    Inception::from_entries(slim.map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), Device::Cpu)
        .unwrap();

    let mut extra: Vec<_> = without("");
    extra.push(("AuxLogits.fc.weight".to_string(), Tensor::zeros([1008, 768], (Kind::Float, Device::Cpu))));
    let err = format!("{:#}", Inception::from_entries(extra, Device::Cpu).err().unwrap());
    assert!(err.starts_with("unexpected key AuxLogits.fc.weight"), "{err}");
    let mut bent: Vec<_> = without("");
    let at = bent.iter().position(|(n, _)| n == "Mixed_7c.branch_pool.conv.weight").unwrap();
    bent[at].1 = Tensor::zeros([192, 2048, 3, 3], (Kind::Float, Device::Cpu));
    let err = format!("{:#}", Inception::from_entries(bent, Device::Cpu).err().unwrap());
    assert_eq!(
        err,
        "Mixed_7c.branch_pool.conv.weight has shape [192, 2048, 3, 3], expected [192, 2048, 1, 1]"
    );
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photos are not on this machine")]
fn eval_metric_all_prints_the_three_and_reads_the_data_features_back() {
    let (weights_dir, _, _) = weights();
    let dir = tempfile::tempdir().unwrap();
    // Samples: 20 photos written as PNGs at 64²; data: a folder of 24 other photos.
    let (samples, data) = (dir.path().join("samples"), dir.path().join("data"));
    std::fs::create_dir_all(&samples).unwrap();
    let images = photos(64, 20, 200);
    for i in 0..20 {
        let hwc = images.get(i).permute([1, 2, 0]).contiguous();
        let bytes = Vec::<u8>::try_from(hwc.flatten(0, 2)).unwrap();
        image::RgbImage::from_raw(64, 64, bytes).unwrap().save(samples.join(format!("{i:02}.png"))).unwrap();
    }
    std::fs::create_dir_all(&data).unwrap();
    for entry in
        std::fs::read_dir(photo_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).take(24)
    {
        std::fs::copy(&entry, data.join(entry.file_name().unwrap())).unwrap();
    }
    let args =
        ["--samples", p(&samples), "--data", p(&data), "--metric", "all", "--inception-dir", p(weights_dir)];
    let table = String::from_utf8(run_ok(env!("CARGO_BIN_EXE_eval"), dir.path(), &args).stdout).unwrap();
    for part in ["SWD×1e3 (mean of 3 levels)", "FID: ", "KID: ", "(100 subsets of 20)"] {
        assert!(table.contains(part), "{part:?} not in:\n{table}");
    }
    let json_args = [&args[..], &["--json"]].concat();
    let line: serde_json::Value =
        serde_json::from_slice(&run_ok(env!("CARGO_BIN_EXE_eval"), dir.path(), &json_args).stdout).unwrap();
    let (fid, kid, kid_std) =
        (line["fid"].as_f64().unwrap(), line["kid"].as_f64().unwrap(), line["kid_std"].as_f64().unwrap());
    assert!(fid > 0.0 && line["swd"].as_f64().unwrap() > 0.0, "{line}");
    // 20 images a side, under torch-fidelity's subset size: every subset is all of them.
    assert_eq!((kid_std, line["kid_subset_size"].as_u64()), (0.0, Some(20)), "{line}");
    let halves = [&json_args[..], &["--kid-subset-size", "10"]].concat();
    let line10: serde_json::Value =
        serde_json::from_slice(&run_ok(env!("CARGO_BIN_EXE_eval"), dir.path(), &halves).stdout).unwrap();
    assert!(line10["kid_std"].as_f64().unwrap() > 0.0 && line10["kid_subset_size"] == 10, "{line10}");
    assert!(table.contains(&format!("FID: {fid:.4}")), "the table and the JSON differ:\n{table}\n{line}");

    // The data's features were cached inside its folder; replaced by others, they are read back.
    let cached: Vec<PathBuf> =
        std::fs::read_dir(data.join(".dit-features")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let features = load(&cached[0], "features");
    assert_eq!(features.size(), [20, 2048]);
    save(&cached[0], "features", &(features + 1.0));
    let again: serde_json::Value =
        serde_json::from_slice(&run_ok(env!("CARGO_BIN_EXE_eval"), dir.path(), &json_args).stdout).unwrap();
    assert!(again["fid"].as_f64().unwrap() > fid + 100.0, "the cache was not read: {again} after {line}");
    assert_ne!(again["kid"].as_f64().unwrap(), kid);

    // The default stays SWD alone, and never looks for the weights.
    let swd_only = ["--samples", p(&samples), "--data", p(&data), "--json"];
    let out = run_bin(env!("CARGO_BIN_EXE_eval"), dir.path(), &swd_only);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line.get("fid").is_none() && line.get("kid").is_none() && line["swd"].is_number(), "{line}");
}

#[test]
#[cfg_attr(not(dit_photos), ignore = "the shared photos are not on this machine")]
fn the_training_probe_logs_fid_and_kid_when_the_weights_are_present() {
    let (weights_dir, _, _) = weights();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = common::panda_folder(d); // 16 images: epochs of 2 steps
    let eval = r#"{"train": {"epoch": 2, "num_workers": 2, "eval": {"every_epochs": 2, "num": 16},
                             "preview": {"sampler": "ddim", "steps": 5, "every_epochs": 0}}}"#;
    let cfg = common::write_tiny_config(d, "tiny.json", &[eval]);
    let args = [
        "--config",
        p(&cfg),
        "--device",
        "cpu",
        "--data",
        p(&imgs),
        "--checkpoint",
        "w.ot",
        "--logdir",
        "logs",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(d)
        .args(args)
        .env("DIT_INCEPTION_DIR", weights_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sample quality: FID and KID too") && stdout.contains(", FID "), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&common::golden(&["tb_tags", "--config", p(&d.join("logs"))])).unwrap();
    for tag in ["Quality/swd", "Quality/fid", "Quality/kid"] {
        let logged = summary["scalars"][tag].as_array().unwrap_or_else(|| panic!("no {tag}: {summary}"));
        assert_eq!(logged.len(), 1, "{tag}: {logged:?}");
        assert!(logged[0][1].as_f64().unwrap().is_finite(), "{tag}: {logged:?}");
    }
}
