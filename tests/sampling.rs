//! Sampling: seed parity of the DDPM loop with the project's Python reference of the original,
//! DDIM's update and determinism, DPM-Solver++ against exact denoisers (a point mass and
//! Gaussian data) for every prediction target, the preview-state choice, the image grid, and
//! the `sample` binary's outputs and one-line errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use dit::checkpoint::state::{self, TrainMeta};
use dit::config::{DiffusionConfig, Prediction};
use dit::diffusion::Schedule;
use dit::sampling::{self, Normalize, SampleOptions, SamplerKind};
use dit::{Config, Dit};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The tiny model with two labels and a short schedule, so that a full DDPM run takes a moment.
const SAMPLING: &str = r#"{"model": {"label_num": 2}, "diffusion": {"max_t": 50}}"#;

fn tiny_config() -> Config {
    tiny(&[SAMPLING])
}

/// A randomly initialised tiny model.
fn tiny_model(seed: i64) -> (VarStore, Dit) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let model = Dit::new(&vs.root(), &tiny_config().model);
    (vs, model)
}

/// Writes the tiny config and random weights (saved from Rust as .safetensors) into `dir`.
fn tiny_checkpoint(dir: &Path) -> (PathBuf, PathBuf) {
    let config = write_tiny_config(dir, "tiny.json", &[SAMPLING]);
    let weights = dir.join("tiny.safetensors");
    let (vs, _) = tiny_model(3);
    dit::checkpoint::save_weights(&vs, &weights).unwrap();
    (config, weights)
}

/// Runs the `sample` binary in `dir` (so a default output lands there).
fn sample_bin(dir: &Path, args: &[&str]) -> Output {
    run_bin(env!("CARGO_BIN_EXE_sample"), dir, args)
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "sample failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn noise(seed: i64, n: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu))
}

fn run(model: &Dit, (sampler, eta): (SamplerKind, f64), steps: i64, seed: i64) -> Tensor {
    let schedule = Schedule::new(&tiny_config().diffusion, Device::Cpu);
    let opts = SampleOptions {
        sampler,
        steps,
        eta,
        keep: vec![],
        guidance: None,
        shift: None,
        cfg_interval_start: None,
    };
    let labels = Tensor::from_slice(&[0i64, 1]);
    sampling::sample(model, &schedule, &opts, noise(seed, 2), &labels, &mut |_, _| {}).unwrap().0
}

fn in_range(x: &Tensor) -> bool {
    x.min().double_value(&[]) >= -1.0 && x.max().double_value(&[]) <= 1.0
}

#[test]
fn ddpm_equals_the_original_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (config, weights) = tiny_checkpoint(d);
    for seed in ["7", "1234"] {
        let py = d.join(format!("py{seed}.safetensors"));
        let draw = ["--config", p(&config), "--seed", seed, "--num", "3", "--label", "1"];
        golden(&[&["sample", "--weights", p(&weights), "--out", p(&py)][..], &draw].concat());
        let rs = d.join(format!("rs{seed}.safetensors"));
        let rust =
            ["--checkpoint", p(&weights), "--sampler", "ddpm", "--tensor-out", p(&rs), "--device", "cpu"];
        ok(&sample_bin(d, &[&rust[..], &draw].concat()));
        assert!(!d.join("samples.png").exists(), "no default grid when --tensor-out is given");
        let expected = read(&py).remove("images").unwrap();
        let got = read(&rs).remove("images").unwrap();
        assert_eq!(got.size(), [3, 3, 16, 16]);
        let mean = (&got - &expected).abs().mean(Kind::Float).double_value(&[]);
        let max = max_abs_diff(&got, &expected);
        let inside = got.abs().lt(0.999).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!(
            "seed {seed}: mean abs diff {mean:e}, max {max:e}; {:.0}% of values unclamped",
            inside * 100.0
        );
        assert!(mean <= 1e-4, "seed {seed}: mean abs diff {mean:e} (max {max:e})");
    }
}

#[test]
fn ddim_with_eta_0_is_deterministic_and_depends_on_the_seed() {
    let _rng = rng_lock();
    let (_vs, model) = tiny_model(5);
    let ddim = (SamplerKind::Ddim, 0.0);
    let a = run(&model, ddim, 10, 1);
    let b = run(&model, ddim, 10, 1);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let c = run(&model, ddim, 10, 2);
    assert!(max_abs_diff(&a, &c) > 1e-2, "different seeds gave the same images");
    assert!(in_range(&a) && in_range(&c));
}

#[test]
fn ddim_with_every_step_and_eta_1_runs_in_range() {
    let _rng = rng_lock();
    let (_vs, model) = tiny_model(5);
    let x = run(&model, (SamplerKind::Ddim, 1.0), 50, 3);
    assert_eq!(x.size(), [2, 3, 16, 16]);
    assert!(in_range(&x) && x.isfinite().all().int64_value(&[]) == 1);
    // η > 0 draws noise, so another seed gives another sample.
    assert!(max_abs_diff(&x, &run(&model, (SamplerKind::Ddim, 1.0), 50, 4)) > 1e-2);
}

#[test]
fn ddim_step_recovers_x0_from_the_true_noise() {
    let _rng = rng_lock();
    let s = Schedule::new(&Default::default(), Device::Cpu);
    tch::manual_seed(0);
    let x0 = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 1.8 - 0.9; // inside [−1, 1]
    let eps = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let ab = |t: i64| s.alphas_cumprod.double_value(&[t]);
    let noised = |t: i64| &x0 * ab(t).sqrt() + &eps * (1.0 - ab(t)).sqrt();
    let t = 500;
    let xt = noised(t);
    // The last step returns x̂0, here exactly x0.
    assert!(max_abs_diff(&s.ddim_step(&xt, &eps, t, None, 0.0), &x0) < 1e-5);
    // A deterministic step lands on the same trajectory: x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev)·ε,
    // clamped to [−1, 1] as the original's DDPM clamps every step.
    let on_trajectory = noised(200).clamp(-1.0, 1.0);
    assert!(max_abs_diff(&s.ddim_step(&xt, &eps, t, Some(200), 0.0), &on_trajectory) < 1e-5);
    // With η = 1 and adjacent steps, σ² (eq. 16) is DDPM's posterior variance.
    tch::manual_seed(9);
    let got = s.ddim_step(&xt, &eps, t, Some(t - 1), 1.0);
    tch::manual_seed(9);
    let z = xt.randn_like();
    let var = s.variance.double_value(&[t]);
    let want =
        (&x0 * ab(t - 1).sqrt() + &eps * (1.0 - ab(t - 1) - var).sqrt() + z * var.sqrt()).clamp(-1.0, 1.0);
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn ddim_timesteps_are_evenly_spaced_and_include_both_ends() {
    let s = Schedule::new(&Default::default(), Device::Cpu);
    let ts = s.ddim_timesteps(50);
    assert_eq!(ts.len(), 50);
    assert_eq!((ts[0], ts[1], ts[48], ts[49]), (999, 979, 20, 0));
    assert!(ts.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(s.ddim_timesteps(1000), (0..1000).rev().collect::<Vec<_>>());
    assert_eq!(s.ddim_timesteps(1), [999]);
    assert_eq!(s.ddim_timesteps(2), [999, 0]);
}

#[test]
fn sample_keeps_the_states_asked_for() {
    let _rng = rng_lock();
    let (_vs, model) = tiny_model(5);
    let schedule = Schedule::new(&tiny_config().diffusion, Device::Cpu);
    let opts = SampleOptions {
        sampler: SamplerKind::Ddpm,
        steps: 50,
        eta: 0.0,
        keep: vec![50, 0, 25],
        guidance: None,
        shift: None,
        cfg_interval_start: None,
    };
    let labels = Tensor::from_slice(&[1i64, 1]);
    let mut calls = vec![];
    let (x, kept) = sampling::sample(&model, &schedule, &opts, noise(8, 2), &labels, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(kept.len(), 3);
    assert_eq!(max_abs_diff(&kept[0], &x), 0.0);
    assert_eq!(max_abs_diff(&kept[1], &noise(8, 2)), 0.0);
    assert_eq!(calls.len(), 50);
    assert_eq!(calls[49], (50, 50));

    let bad = |opts: SampleOptions, labels: &Tensor| {
        format!(
            "{:#}",
            sampling::sample(&model, &schedule, &opts, noise(8, 2), labels, &mut |_, _| {}).unwrap_err()
        )
    };
    let ddim = |steps, keep| SampleOptions {
        sampler: SamplerKind::Ddim,
        steps,
        eta: 0.0,
        keep,
        guidance: None,
        shift: None,
        cfg_interval_start: None,
    };
    assert!(bad(ddim(5, vec![6]), &labels).contains("state 6"));
    assert!(bad(ddim(5, vec![]), &Tensor::from_slice(&[0i64, 2])).contains("label 2"));
    assert!(bad(ddim(0, vec![]), &labels).contains("at least 1"));
    assert!(bad(ddim(51, vec![]), &labels).contains("max_t"));
    assert!(bad(
        SampleOptions {
            sampler: SamplerKind::Ddpm,
            steps: 10,
            eta: 0.0,
            keep: vec![],
            guidance: None,
            shift: None,
            cfg_interval_start: None
        },
        &labels
    )
    .contains("ddim"));
}

#[test]
fn progress_indices_are_the_originals() {
    let expected: Vec<i64> = (0..16).map(|k| 1000 - 63 * k).rev().collect();
    assert_eq!(expected[0], 55);
    assert_eq!(sampling::progress_indices(1000), expected);
    assert_eq!(sampling::progress_indices(16), (1..=16).collect::<Vec<_>>());
    let short = sampling::progress_indices(50);
    assert_eq!((short.len(), short[15], short[14]), (16, 50, 47));
    assert_eq!(sampling::progress_indices(10), (0..=10).collect::<Vec<_>>());
    let even = sampling::evenly_spaced_states(50, 16);
    assert_eq!((even.len(), even[0], even[15]), (16, 0, 50));
    assert_eq!(sampling::evenly_spaced_states(5, 16), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn image_grid_has_make_grid_layout_and_normalisation() {
    // Five 4×6 images, three per row: 2 rows, 2-pixel padding everywhere.
    let images = Tensor::zeros([5, 3, 4, 6], (Kind::Float, Device::Cpu));
    let _ = images.get(0).get(0).fill_(1.0); // image 0 red
    let _ = images.get(4).get(2).fill_(-1.0); // image 4 keeps mid-grey red/green, no blue
    let img = sampling::to_image_grid(&images, 3, Normalize::Fixed);
    assert_eq!(img.dimensions(), (3 * (6 + 2) + 2, 2 * (4 + 2) + 2));
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0], "padding is black");
    assert_eq!(img.get_pixel(2, 2).0, [255, 128, 128], "image 0 at (2, 2)");
    assert_eq!(img.get_pixel(7, 5).0, [255, 128, 128], "image 0's last pixel");
    assert_eq!(img.get_pixel(8, 2).0, [0, 0, 0], "padding between tiles");
    assert_eq!(img.get_pixel(10, 2).0, [128, 128, 128], "image 1");
    assert_eq!(img.get_pixel(2 + 8, 2 + 6).0, [128, 128, 0], "image 4: second row, second column");
    assert_eq!(img.get_pixel(2 + 16, 2 + 6).0, [0, 0, 0], "no sixth image");

    // Min–max over the whole tensor, as make_grid(normalize=True).
    let ramp = Tensor::arange(2 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 1, 4, 4]) * 0.5 + 3.0;
    let img = sampling::to_image_grid(&ramp, 8, Normalize::MinMax);
    assert_eq!(img.dimensions(), (2 * 6 + 2, 6 + 2));
    assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0], "minimum, one channel shown as grey");
    assert_eq!(img.get_pixel(6 + 2 + 3, 2 + 3).0, [255, 255, 255], "maximum");
    let constant = sampling::to_image_grid(&ramp.ones_like(), 8, Normalize::MinMax);
    assert_eq!(constant.get_pixel(2, 2).0, [0, 0, 0], "a constant tensor does not give NaNs");

    let single = sampling::to_image(&Tensor::zeros([3, 4, 6], (Kind::Float, Device::Cpu)));
    assert_eq!(single.dimensions(), (6, 4));
}

#[test]
fn save_png_creates_folders_and_names_the_path_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let img = sampling::to_image_grid(&noise(1, 2), 2, Normalize::Fixed);
    let path = dir.path().join("a/b/grid.png");
    sampling::save_png(&img, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
    let blocked = dir.path().join("a/b/grid.png/x.png");
    let err = format!("{:#}", sampling::save_png(&img, &blocked).unwrap_err());
    assert!(err.contains("grid.png"), "{err}");
}

#[test]
fn sample_binary_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (config, weights) = tiny_checkpoint(d);
    let base = ["--checkpoint", p(&weights), "--config", p(&config), "--device", "cpu", "--sampler", "ddim"];
    // η = 0: deterministic DDIM (the default η is 1), so batching can be compared below.
    let out = [
        "--eta",
        "0",
        "--steps",
        "5",
        "--num",
        "3",
        "--out",
        "g.png",
        "--out-dir",
        "each",
        "--progress",
        "p.png",
        "--tensor-out",
        "t.safetensors",
    ];
    let stdout = ok(&sample_bin(d, &[&base[..], &out[..]].concat()));
    assert!(stdout.contains("weights from"), "{stdout}");
    assert_eq!(image::open(d.join("g.png")).unwrap().to_rgb8().dimensions(), (2 * 18 + 2, 2 * 18 + 2));
    // steps 5: the states 0..=5, six columns; three rows.
    assert_eq!(image::open(d.join("p.png")).unwrap().to_rgb8().dimensions(), (6 * 18 + 2, 3 * 18 + 2));
    for i in 0..3 {
        assert_eq!(image::open(d.join(format!("each/{i:04}.png"))).unwrap().to_rgb8().dimensions(), (16, 16));
    }
    let full = read(&d.join("t.safetensors")).remove("images").unwrap();
    assert_eq!((full.size(), full.kind()), (vec![3, 3, 16, 16], Kind::Float));
    assert!(in_range(&full));

    // Batches share the initial noise; deterministic DDIM then gives the same images.
    let chunked =
        ["--eta", "0", "--steps", "5", "--num", "3", "--batch-size", "2", "--tensor-out", "c.safetensors"];
    ok(&sample_bin(d, &[&base[..], &chunked[..]].concat()));
    let chunked = read(&d.join("c.safetensors")).remove("images").unwrap();
    // Up to float rounding: batched matrix products may sum in another order.
    let chunk_diff = max_abs_diff(&full, &chunked);
    assert!(chunk_diff < 1e-4, "chunked vs whole batch: max abs diff {chunk_diff:e}");

    // Nothing named: the grid goes to samples.png.
    ok(&sample_bin(d, &[&base[..], &["--steps", "2", "--num", "1"][..]].concat()));
    assert!(d.join("samples.png").is_file());
}

#[test]
fn sample_binary_uses_ema_weights_and_class_names_of_a_training_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model_weights, _) = tiny_model(3);
    let (ema_weights, _) = tiny_model(4);
    let named = |vs: &VarStore| dit::checkpoint::named_variables(vs);
    let meta = TrainMeta {
        step: 12,
        epoch: 1,
        ..TrainMeta::fresh(0, vec!["panda".into(), "bamboo".into()], tiny_config())
    };
    let path = d.join("run.ot.state.safetensors");
    state::save(&path, &meta, &[("model", &named(&model_weights)), ("ema", &named(&ema_weights))]).unwrap();
    let args =
        ["--checkpoint", p(&path), "--device", "cpu", "--sampler", "ddim", "--steps", "4", "--num", "2"];
    let ema =
        ok(&sample_bin(d, &[&args[..], &["--label", "bamboo", "--tensor-out", "ema.safetensors"]].concat()));
    assert!(ema.contains("EMA weights of step 12") && ema.contains("1 (bamboo)"), "{ema}");
    let raw = ok(&sample_bin(
        d,
        &[&args[..], &["--label", "1", "--no-ema", "--tensor-out", "raw.safetensors"]].concat(),
    ));
    assert!(raw.contains("raw weights of step 12"), "{raw}");
    let (ema, raw) = (read(&d.join("ema.safetensors")), read(&d.join("raw.safetensors")));
    assert!(max_abs_diff(&ema["images"], &raw["images"]) > 1e-3);
}

#[test]
fn bad_arguments_end_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (config, weights) = tiny_checkpoint(d);
    let other = write_tiny_config(d, "other.json", &[SAMPLING, r#"{"model": {"emb_size": 8}}"#]);
    let ck = ["--checkpoint", p(&weights), "--config", p(&config), "--device", "cpu"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--checkpoint", "nowhere.safetensors"], "no such checkpoint"),
        (vec!["--checkpoint", p(&weights), "--config", p(&other)], "does not match"),
        ([&ck[..], &["--label", "2"]].concat(), "out of range"),
        ([&ck[..], &["--label", "-1"]].concat(), "out of range"),
        ([&ck[..], &["--label", "cat"]].concat(), "no class names"),
        ([&ck[..], &["--sampler", "ddim", "--steps", "0"]].concat(), "at least 1"),
        ([&ck[..], &["--sampler", "ddim", "--steps", "51"]].concat(), "max_t"),
        ([&ck[..], &["--steps", "10"]].concat(), "use ddim or dpmpp_2m"),
        ([&ck[..], &["--sampler", "dpmpp_2m", "--steps", "51"]].concat(), "max_t"),
        ([&ck[..], &["--sampler", "dpmpp_2m", "--steps", "50"]].concat(), "at most 49 steps"),
        ([&ck[..], &["--sampler", "dpmpp_2m", "--eta", "1"]].concat(), "ddim only"),
        ([&ck[..], &["--prediction", "x1"]].concat(), "x1"),
        ([&ck[..], &["--num", "0"]].concat(), "--num"),
        ([&ck[..], &["--batch-size", "0"]].concat(), "--batch-size"),
        ([&ck[..], &["--sampler", "ddim", "--eta", "-0.5"]].concat(), "--eta"),
        ([&ck[..], &["--eta", "0.5"]].concat(), "ddim only"),
        ([&ck[..], &["--tensor-out", "x.png"]].concat(), ".safetensors"),
    ];
    for (args, needle) in cases {
        let out = sample_bin(d, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked") && !stderr.contains("internal error"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
    assert!(!d.join("samples.png").exists());
}

/// The exact denoiser of data drawn from N(μ, s²) per value: x̂0(x_t) = μ + α·s²/(α²·s² + σ²)·(x_t − α·μ),
/// answered as a model predicting `schedule.prediction` would.
fn gaussian_oracle(schedule: &Schedule, mu: f64, s: f64) -> impl FnMut(&Tensor, &Tensor) -> Tensor + '_ {
    move |x: &Tensor, t: &Tensor| {
        let c = schedule.coefficients(t);
        let gain = &c.signal * (s * s) / (c.signal.square() * (s * s) + c.noise.square());
        let x0 = (x - &c.signal * mu) * gain + mu;
        let eps = (x - &c.signal * &x0) / &c.noise;
        schedule.prediction.target(&x0, &eps, &c)
    }
}

fn schedule_for(prediction: Prediction) -> Schedule {
    Schedule::new(&DiffusionConfig { prediction, ..Default::default() }, Device::Cpu)
}

/// The exact denoiser of a point mass: its x̂0 is the point whatever x_t is, answered as a model
/// predicting `schedule.prediction` would.
fn point_oracle<'a>(
    schedule: &'a Schedule,
    point: &'a Tensor,
) -> impl FnMut(&Tensor, &Tensor) -> Tensor + 'a {
    move |x: &Tensor, t: &Tensor| {
        let c = schedule.coefficients(t);
        let eps = (x - &c.signal * point) / &c.noise;
        schedule.prediction.target(point, &eps, &c)
    }
}

fn dpm(steps: i64, keep: Vec<i64>) -> SampleOptions {
    SampleOptions {
        sampler: SamplerKind::DpmPP2m,
        steps,
        eta: 0.0,
        keep,
        guidance: None,
        shift: None,
        cfg_interval_start: None,
    }
}

#[test]
fn dpm_solver_with_a_point_mass_oracle_lands_on_the_point_along_the_exact_path() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let point = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
    let noise = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let s = schedule_for(prediction);
        let mut oracle = point_oracle(&s, &point);
        let steps = 10;
        let (x, kept) = sampling::sample_with(
            &s,
            &dpm(steps, (0..=steps).collect()),
            noise.copy(),
            &mut oracle,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(max_abs_diff(&x, &point) < 1e-5, "{prediction:?}: {}", max_abs_diff(&x, &point));
        // On the way, the state at t is α_t·point + σ_t·ε of the starting noise (the ODE's path).
        let ts = s.dpm_solver_timesteps(steps);
        assert_eq!((ts.len(), ts[0], ts[9]), (10, 999, 100));
        for (i, &t) in ts.iter().enumerate() {
            let c = s.coefficients_at(t);
            let first = s.coefficients_at(ts[0]);
            let eps = (&noise - &first.signal * &point) / &first.noise;
            let want = &c.signal * &point + &c.noise * eps;
            let err = max_abs_diff(&kept[i], &want);
            assert!(err < 1e-4, "{prediction:?}: state {i} (t = {t}) off the path by {err}");
        }
    }
}

#[test]
fn dpm_solver_is_second_order_on_gaussian_data_for_every_prediction() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let (mu, sd) = (0.1, 0.2);
    let noise = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    // 9, 18 and 36 steps all visit t = 222 (2·111, 4·55.5, 8·27.75).
    let at = 222;
    let mut finals = vec![];
    for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let s = schedule_for(prediction);
        // The exact path keeps z = (x_t − α_t·μ)/sqrt(α_t²·s² + σ_t²) fixed.
        let scale = |t: i64| {
            let ab = s.alphas_cumprod.double_value(&[t]);
            (ab * sd * sd + 1.0 - ab).sqrt()
        };
        let z = (&noise - s.alphas_cumprod.double_value(&[999]).sqrt() * mu) / scale(999);
        let exact = z * scale(at) + s.alphas_cumprod.double_value(&[at]).sqrt() * mu;
        let mut errors = vec![];
        for steps in [9, 18, 36] {
            let ts = s.dpm_solver_timesteps(steps);
            let state = ts.iter().position(|&t| t == at).unwrap() as i64; // state k is at ts[k]
            let mut oracle = gaussian_oracle(&s, mu, sd);
            let opts = dpm(steps, vec![state]);
            let (x, kept) =
                sampling::sample_with(&s, &opts, noise.copy(), &mut oracle, &mut |_, _| {}).unwrap();
            errors.push(max_abs_diff(&kept[0], &exact));
            if steps == 18 {
                finals.push(x);
            }
        }
        eprintln!("{prediction:?}: error at t = {at} after 9, 18, 36 steps: {errors:?}");
        // Halving the step size divides a second-order solver's error by about 4 (measured
        // 3.5 and 3.7 in float64; a first-order one's by 2: DDIM's measured 1.95 and 1.99).
        assert!(errors[0] / errors[1] > 3.0 && errors[1] / errors[2] > 3.0, "{prediction:?}: {errors:?}");
    }
    // The same denoiser, expressed as ε, x0 or v, gives the same samples.
    assert!(max_abs_diff(&finals[0], &finals[1]) < 1e-4 && max_abs_diff(&finals[0], &finals[2]) < 1e-4);
}

#[test]
fn every_sampler_lands_on_the_point_of_a_point_mass_oracle_for_every_prediction() {
    let _rng = rng_lock();
    tch::manual_seed(8);
    let point = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
    let noise = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let s = schedule_for(prediction);
        for (sampler, steps, eta) in
            [(SamplerKind::Ddpm, 1000, 0.0), (SamplerKind::Ddim, 50, 1.0), (SamplerKind::Ddim, 50, 0.0)]
        {
            let mut oracle = point_oracle(&s, &point);
            let opts = SampleOptions {
                sampler,
                steps,
                eta,
                keep: vec![],
                guidance: None,
                shift: None,
                cfg_interval_start: None,
            };
            let (x, _) = sampling::sample_with(&s, &opts, noise.copy(), &mut oracle, &mut |_, _| {}).unwrap();
            // DDPM's last step (s = 0) and DDIM's return the x̂0 the oracle implies.
            let err = max_abs_diff(&x, &point);
            assert!(err < 1e-3, "{prediction:?} {sampler:?} η {eta}: {err}");
        }
    }
}

#[test]
fn every_sampler_at_1_2_t_minus_1_and_t_steps_gives_finite_samples_or_one_line() {
    let _rng = rng_lock();
    tch::manual_seed(9);
    let noise = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
    let max_t = 10;
    for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let s = Schedule::new(&DiffusionConfig { prediction, max_t, ..Default::default() }, Device::Cpu);
        for sampler in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmPP2m] {
            for steps in [1, 2, max_t - 1, max_t] {
                let mut oracle = gaussian_oracle(&s, 0.1, 0.3);
                let opts = SampleOptions {
                    sampler,
                    steps,
                    eta: 1.0,
                    keep: vec![],
                    guidance: None,
                    shift: None,
                    cfg_interval_start: None,
                };
                let what = format!("{prediction:?} {sampler:?} {steps} steps");
                // DDPM takes all T steps only; DPM-Solver++ at most T − 1 (distinct steps above 0).
                let runs = match sampler {
                    SamplerKind::Ddpm => steps == max_t,
                    SamplerKind::Ddim => true,
                    SamplerKind::DpmPP2m => steps < max_t,
                    SamplerKind::Euler | SamplerKind::Heun => unreachable!("not in this loop"),
                };
                match sampling::sample_with(&s, &opts, noise.copy(), &mut oracle, &mut |_, _| {}) {
                    Ok((x, _)) => {
                        assert!(runs, "{what}: ran");
                        let finite = x.isfinite().all().int64_value(&[]) == 1;
                        assert!(finite && in_range(&x), "{what}: not finite in [-1, 1]");
                    }
                    Err(e) => {
                        let text = format!("{e:#}");
                        assert!(!runs, "{what}: {text}");
                        assert!(!text.contains('\n') && text.contains(&steps.to_string()), "{what}: {text}");
                    }
                }
            }
        }
    }
    // The preview's sampler is checked by the same rule when the config is read.
    let mut cfg = Config::default();
    cfg.diffusion.max_t = max_t;
    cfg.train.preview.sampler = SamplerKind::DpmPP2m;
    cfg.train.preview.steps = max_t;
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("train.preview.steps") && err.contains("at most 9 steps"), "{err}");
    cfg.train.preview.steps = max_t - 1;
    cfg.validate().unwrap();
}
