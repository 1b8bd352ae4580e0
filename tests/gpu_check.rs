//! The harness of `scripts/gpu_check`, with the CPU standing in for CUDA: every check runs and
//! reports, the step comparison passes between two CPU computations, fails on an injected
//! gradient error of 0.1%, and the image statistic tells the training data from noise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binaries the script expects in one folder (as `scripts/gpu_check build` leaves them).
fn bin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_train"));
    let target = exe.parent().unwrap();
    for (name, path) in [
        ("train", exe.clone()),
        ("sample", PathBuf::from(env!("CARGO_BIN_EXE_sample"))),
        ("dist_smoke", target.join("examples/dist_smoke")),
        ("gpu_check", target.join("examples/gpu_check")),
    ] {
        assert!(path.is_file(), "{} is not built", path.display());
        std::os::unix::fs::symlink(&path, bin.join(name)).unwrap();
    }
    bin
}

fn gpu_check(bin: &Path, env: &[(&str, &str)]) -> Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new(Path::new(root).join("scripts/gpu_check"))
        .current_dir(root)
        .env("GPU_CHECK_BIN", bin)
        .env("GPU_CHECK_DEVICE", "cpu")
        .env("PYTHON", Path::new(root).join(".venv/bin/python"))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn cpu_stand_in_runs_every_check_and_says_cuda_was_not_tested() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let quick = [
        ("GPU_CHECK_TOKENS", "64"),
        ("GPU_CHECK_STEPS", "64"),
        ("GPU_CHECK_BF16_STEPS", "2"),
        ("GPU_CHECK_BIG", "64"),
    ];
    let out = gpu_check(&bin, &quick);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("CUDA WAS NOT TESTED"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    // fp32 and bf16 × naive and fused, plus fused with checkpointing (fp32, bf16) and with two
    // micro-batches.
    assert_eq!(count("PASS step 64 tokens"), 7, "{text}");
    assert_eq!(count("PASS step 64 tokens fp32 fused checkpointed"), 1, "{text}");
    assert_eq!(count("PASS step 64 tokens fp32 fused 2 micro-batches"), 1, "{text}");
    assert_eq!(count("INFO train: quick-start preset"), 1, "{text}");
    assert_eq!(count("INFO samples of the"), 2, "{text}");
    assert_eq!(count("PASS bf16 "), 4, "{text}");
    assert_eq!(count("PASS data parallel: collectives on 2 process(es) (gloo)"), 1, "{text}");
    assert_eq!(count("INFO data parallel: bench img "), 8, "{text}");
    assert_eq!(count("PASS data parallel: quick-start preset, 2 × 32 images"), 1, "{text}");
    assert_eq!(count("FAIL"), 0, "{text}");
    assert!(text.trim_end().ends_with("RESULT: PASS (cpu)"), "{text}");
}

#[test]
fn step_check_fails_on_a_gradient_off_by_a_thousandth_in_fp32() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_train")).parent().unwrap().join("examples/gpu_check");
    let out =
        Command::new(exe).args(["step", "cpu", "64"]).env("GPU_CHECK_PERTURB", "1e-3").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("FAIL step 64 tokens fp32 naive") && l.contains("error 1.00e-3")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("FAIL step 64 tokens fp32 fused")), "{text}");
}

#[test]
fn image_statistic_passes_the_training_data_and_fails_noise() {
    let dir = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_train")).parent().unwrap().join("examples/gpu_check");
    let ds = dit::data::Dataset::open("builtin:pandas", 32).unwrap();
    let images: Vec<tch::Tensor> = (300..364)
        .map(|i| tch::Tensor::from_slice(&ds.load(i).unwrap()).view([32, 32, 3]).permute([2, 0, 1]))
        .collect();
    let data = tch::Tensor::stack(&images, 0).to_kind(tch::Kind::Float) / 127.5 - 1.0;
    tch::manual_seed(0);
    let noise = tch::Tensor::randn([64, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu)).clamp(-1.0, 1.0);
    for (name, images, pass) in [("data", data, true), ("noise", noise, false)] {
        let file = dir.path().join(format!("{name}.safetensors"));
        dit::checkpoint::write_tensors(&file, &[("images".to_string(), images)]).unwrap();
        let out = Command::new(&exe)
            .args(["image-stat", file.to_str().unwrap(), "builtin:pandas"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), pass, "{name}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with(if pass { "PASS" } else { "FAIL" }), "{name}: {text}");
    }
}
