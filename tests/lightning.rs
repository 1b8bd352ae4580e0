//! Exchange with LightningDiT's published code (`../shared/models/lightningdit`, run in place by
//! tests/python/lightning_reference.py): the same weights give the same forward pass with every
//! switch off, each alone and all on; the same flow-matching loss on the same (x1, x0, t); the
//! same Euler and Heun samples from the same noise, with and without guidance and shift; and
//! weights trained here load strictly into `LightningDiT(...)`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{p, read, rng_lock, root, run_ok};
use dit::checkpoint::state::TrainMeta;
use dit::config::{Config, ModelConfig, SamplerKind};
use dit::diffusion::Schedule;
use dit::sampling::{self, SampleOptions};
use dit::train::{Draws, Trainer};
use dit::Dit;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// A LightningDiT small enough for the CPU: 8² inputs of 4 channels, patch 2 (16 tokens),
/// width 32, two heads of 16, two blocks, three classes and the "no label" row.
const TINY: &str = r#""arch": "lightning", "img_size": 8, "patch_size": 2, "channel": 4, "emb_size": 32,
    "head": 2, "dit_num": 2, "label_num": 3, "null_label": true"#;

const SWITCHES: [&str; 6] =
    ["use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift", "learn_sigma"];

fn model_config(switches: &[&str]) -> ModelConfig {
    let on: String = switches.iter().map(|s| format!(r#", "{s}": true"#)).collect();
    common::model_config(&format!("{{{TINY}{on}}}"))
}

/// The keyword arguments of `LightningDiT(...)` for `cfg`.
fn flags(cfg: &ModelConfig) -> String {
    let mut f = serde_json::json!({
        "input_size": cfg.img_size, "patch_size": cfg.patch_size, "in_channels": cfg.channel,
        "hidden_size": cfg.emb_size, "depth": cfg.dit_num, "num_heads": cfg.head, "mlp_ratio": cfg.mlp_ratio,
        "class_dropout_prob": if cfg.null_label { 0.1 } else { 0.0 }, "num_classes": cfg.label_num,
    });
    for (name, on) in cfg.switches() {
        f[name] = on.into();
    }
    f.to_string()
}

fn repo() -> PathBuf {
    PathBuf::from(option_env!("DIT_LIGHTNINGDIT").unwrap_or("../shared/models/lightningdit"))
}

/// Runs the reference in `mode` with `args`; panics with its stderr on failure.
fn reference(mode: &str, cfg: &ModelConfig, args: &[&str]) {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root().join("tests/python/lightning_reference.py"))
        .args([mode, "--repo", p(&repo()), "--flags", &flags(cfg)])
        .args(args)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .expect("cannot start the Python reference");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lightning_reference.py {mode} failed:\n{err}");
}

/// The published class's own weights for `cfg`, each trainable parameter moved by N(0, 0.05)
/// so that the layers it initialises to zero take part.
fn published_weights(dir: &Path, cfg: &ModelConfig, seed: u64) -> PathBuf {
    let w = dir.join(format!("published-{seed}.safetensors"));
    reference("init", cfg, &["--out", p(&w), "--seed", &seed.to_string(), "--perturb", "0.05"]);
    w
}

/// This project's model for `cfg` holding the weights in `path` (a strict load).
fn load(cfg: &ModelConfig, path: &Path) -> (VarStore, Dit) {
    let mut vs = VarStore::new(Device::Cpu);
    let model = Dit::new(&vs.root(), cfg);
    dit::checkpoint::load_weights(&mut vs, path).unwrap();
    (vs, model)
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b)
}

#[test]
#[cfg_attr(not(dit_lightningdit), ignore = "LightningDiT's published code is not on this machine")]
fn forward_matches_the_published_class_with_switches_off_each_alone_and_all_on() {
    let dir = tempfile::tempdir().unwrap();
    let sets: Vec<Vec<&str>> =
        [vec![]].into_iter().chain(SWITCHES.iter().map(|s| vec![*s])).chain([SWITCHES.to_vec()]).collect();
    for (i, switches) in sets.iter().enumerate() {
        let cfg = model_config(switches);
        let weights = published_weights(dir.path(), &cfg, i as u64);
        let (x, t, y) = {
            let _rng = rng_lock();
            tch::manual_seed(i as i64);
            (
                randn(&[3, 4, 8, 8]),
                Tensor::rand([3], (Kind::Float, Device::Cpu)),
                Tensor::from_slice(&[0i64, 2, 3]),
            )
        };
        let inputs = dir.path().join("in.safetensors");
        Tensor::write_safetensors(&[("x", &x), ("t", &t), ("y", &y)], &inputs).unwrap();
        let out = dir.path().join("out.safetensors");
        reference("forward", &cfg, &["--weights", p(&weights), "--inputs", p(&inputs), "--out", p(&out)]);
        let want = &read(&out)["out"];
        let (_vs, mut model) = load(&cfg, &weights);
        for attention in ["naive", "fused"] {
            let runtime = serde_json::from_str(&format!(r#"{{"attention": "{attention}"}}"#)).unwrap();
            model.set_runtime(&runtime);
            let got = tch::no_grad(|| model.forward(&x, &y, &t));
            let d = max_abs(&got, want);
            assert!(d < 1e-5, "{switches:?}, {attention} attention: max abs difference {d}");
        }
        assert!(want.abs().max().double_value(&[]) > 0.1, "{switches:?}: the outputs are near zero");
    }
}

/// A flow config with LightningDiT's objective (L2 plus the cosine term) on the tiny model.
fn flow_config(switches: &[&str]) -> Config {
    let on: String = switches.iter().map(|s| format!(r#", "{s}": true"#)).collect();
    Config::from_json(&format!(
        r#"{{"model": {{{TINY}{on}}}, "diffusion": {{"process": "flow", "timestep_sampling": "logit_normal"}},
            "train": {{"loss": "l2", "cosine_loss": true, "batch_size": 4,
                       "preview": {{"sampler": "euler", "steps": 10}}}}}}"#
    ))
    .unwrap()
}

#[test]
#[cfg_attr(not(dit_lightningdit), ignore = "LightningDiT's published code is not on this machine")]
fn the_training_loss_matches_the_published_transport_on_the_same_x1_x0_and_t() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = flow_config(&["use_rope", "use_rmsnorm", "use_swiglu", "use_qknorm"]);
    let weights = published_weights(dir.path(), &cfg.model, 7);
    let _rng = rng_lock();
    tch::manual_seed(11);
    let images = Tensor::randint(256, [4, 4, 8, 8], (Kind::Uint8, Device::Cpu));
    let draws =
        Draws { t: Tensor::rand([4], (Kind::Float, Device::Cpu)), noise: randn(&[4, 4, 8, 8]), drop: None };
    let labels = Tensor::from_slice(&[0i64, 1, 2, 1]);
    let meta = TrainMeta::fresh(1, vec!["a".into(), "b".into(), "c".into()], cfg.clone());
    let mut trainer = Trainer::new(meta, Device::Cpu, dir.path().join("w.safetensors"));
    trainer.load_weights(&weights).unwrap();
    let step = trainer.step_with(&images, &labels, &draws);

    let x1 = dit::data::to_model_range(&images);
    let inputs = dir.path().join("in.safetensors");
    Tensor::write_safetensors(&[("x1", &x1), ("x0", &draws.noise), ("t", &draws.t), ("y", &labels)], &inputs)
        .unwrap();
    let out = dir.path().join("loss.safetensors");
    reference("loss", &cfg.model, &["--weights", p(&weights), "--inputs", p(&inputs), "--out", p(&out)]);
    let terms = read(&out);
    let want = terms["loss"].double_value(&[]) + terms["cos_loss"].double_value(&[]);
    let got = step.loss.double_value(&[]);
    assert!(terms["cos_loss"].double_value(&[]) > 0.1, "the cosine term takes part");
    assert!((got - want).abs() <= 1e-6 * want, "loss {got} against the published {want}");
}

#[test]
#[cfg_attr(not(dit_lightningdit), ignore = "LightningDiT's published code is not on this machine")]
fn euler_and_heun_samples_match_the_published_sampler_with_and_without_guidance_and_shift() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = flow_config(&["use_rope", "use_rmsnorm", "use_swiglu", "use_qknorm"]);
    let weights = published_weights(dir.path(), &cfg.model, 5);
    let (_vs, model) = load(&cfg.model, &weights);
    let schedule = Schedule::new(&cfg.diffusion, Device::Cpu).unclipped();
    // The first noise drawn as `sample` draws it.
    let (z, y) = {
        let _rng = rng_lock();
        tch::manual_seed(3);
        (randn(&[2, 4, 8, 8]), Tensor::from_slice(&[1i64, 2]))
    };
    let inputs = dir.path().join("in.safetensors");
    Tensor::write_safetensors(&[("z", &z), ("y", &y)], &inputs).unwrap();
    let cases = [
        (SamplerKind::Euler, "euler", 8, None, None, None),
        (SamplerKind::Heun, "heun2", 5, None, None, None),
        (SamplerKind::Euler, "euler", 8, Some(0.3), Some(2.5), Some(0.4)),
        (SamplerKind::Heun, "heun2", 5, Some(2.0), Some(1.5), None),
    ];
    for (sampler, method, steps, shift, cfg_scale, start) in cases {
        let out = dir.path().join("sample.safetensors");
        let mut args =
            vec!["--weights".to_string(), p(&weights).into(), "--inputs".into(), p(&inputs).into()];
        args.extend(["--out".into(), p(&out).into(), "--steps".into(), steps.to_string(), "--method".into()]);
        args.push(method.into());
        args.extend(shift.map(|s: f64| ["--timestep-shift".into(), s.to_string()]).into_iter().flatten());
        args.extend(cfg_scale.map(|s: f64| ["--cfg".into(), s.to_string()]).into_iter().flatten());
        args.extend(start.map(|s: f64| ["--cfg-interval-start".into(), s.to_string()]).into_iter().flatten());
        reference("sample", &cfg.model, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let want = &read(&out)["latents"];
        let opts = SampleOptions {
            guidance: cfg_scale,
            shift,
            cfg_interval_start: start,
            steps,
            ..SampleOptions::new(sampler, 1000)
        };
        let (got, _) = sampling::sample(&model, &schedule, &opts, z.copy(), &y, &mut |_, _| {}).unwrap();
        let mean_abs = (&got - want).abs().mean(Kind::Float).double_value(&[]);
        let case = format!("{method} {steps} steps, shift {shift:?}, guidance {cfg_scale:?} from {start:?}");
        assert!(mean_abs < 1e-4, "{case}: mean abs difference {mean_abs}");
        assert!(max_abs(&got, &z) > 0.1, "{case}: the sample moved away from the noise");
    }
}

#[test]
#[cfg_attr(not(dit_lightningdit), ignore = "LightningDiT's published code is not on this machine")]
fn weights_trained_here_load_strictly_into_the_published_class_and_compute_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_tiny_config(
        dir.path(),
        "config.json",
        &[
            r#"{"model": {"arch": "lightning", "img_size": 16, "patch_size": 4, "emb_size": 32, "head": 2,
                "dit_num": 2, "use_rope": true, "use_swiglu": true, "use_rmsnorm": true, "use_qknorm": true}}"#,
            r#"{"diffusion": {"process": "flow", "timestep_sampling": "logit_normal"}}"#,
            r#"{"train": {"loss": "l2", "cosine_loss": true, "model_save_path": "w.safetensors",
                "preview": {"sampler": "euler", "steps": 4, "every_epochs": 0}}}"#,
        ],
    );
    run_ok(env!("CARGO_BIN_EXE_train"), dir.path(), &["--config", p(&cfg), "--max-steps", "3"]);
    let weights = dir.path().join("w.safetensors");
    let model_cfg = Config::load(&cfg).unwrap().model;
    let (x, t, y) = {
        let _rng = rng_lock();
        tch::manual_seed(4);
        (randn(&[2, 3, 16, 16]), Tensor::from_slice(&[0.25f32, 0.8]), Tensor::from_slice(&[0i64, 0]))
    };
    let inputs = dir.path().join("in.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("t", &t), ("y", &y)], &inputs).unwrap();
    let py = dir.path().join("out.safetensors");
    reference("forward", &model_cfg, &["--weights", p(&weights), "--inputs", p(&inputs), "--out", p(&py)]);
    let (_vs, model) = load(&model_cfg, &weights);
    let got = tch::no_grad(|| model.forward(&x, &y, &t));
    let d = max_abs(&got, &read(&py)["out"]);
    assert!(d < 1e-5, "max abs difference {d}");
}

/// LightningDiT's whole recipe on a 16-image folder with every training feature this project
/// adds: classes dropped for guidance, two accumulated micro-batches, blocks recomputed in the
/// backward pass, EMA, previews and the quality probe every epoch (two steps).
const RECIPE: &str = r#"{
  "model": {"arch": "lightning", "emb_size": 32, "head": 2, "dit_num": 2, "use_rope": true, "use_swiglu": true,
            "use_rmsnorm": true, "use_qknorm": true, "wo_shift": true},
  "diffusion": {"process": "flow", "timestep_sampling": "logit_normal"},
  "train": {"loss": "l2", "cosine_loss": true, "adam_beta2": 0.95, "batch_size": 4, "grad_accum_steps": 2,
            "cfg_dropout": 0.25, "ema_decay": 0.9, "data_path": "imgs",
            "preview": {"sampler": "heun", "steps": 3, "every_epochs": 1, "num": 4},
            "eval": {"every_epochs": 1, "num": 16}},
  "runtime": {"activation_checkpointing": "blocks"}
}"#;

#[test]
fn a_flow_lightning_run_resumes_bit_for_bit_and_its_weights_sample_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::panda_folder(d);
    let cfg = common::write_tiny_config(d, "recipe.json", &[RECIPE]);
    let train = |name: &str, steps: &str| {
        let args = [
            "--config",
            p(&cfg),
            "--device",
            "cpu",
            "--seed",
            "9",
            "--checkpoint",
            name,
            "--max-steps",
            steps,
        ];
        String::from_utf8_lossy(&run_ok(env!("CARGO_BIN_EXE_train"), d, &args).stdout).to_string()
    };
    let whole = train("one/w.safetensors", "6");
    assert!(whole.contains("sample quality: SWD"), "no quality probe:\n{whole}");
    train("two/w.safetensors", "3");
    assert!(train("two/w.safetensors", "6").contains("at step 3"));
    let (a, b) = (
        dit::checkpoint::state::load(&d.join("one/w.safetensors.state.safetensors")).unwrap(),
        dit::checkpoint::state::load(&d.join("two/w.safetensors.state.safetensors")).unwrap(),
    );
    assert_eq!((a.meta.step, b.meta.step), (6, 6));
    for g in dit::checkpoint::state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            assert!(t.equal(&b.group(g).unwrap()[name]), "{g}.{name} differs after the restart");
        }
    }
    assert!(d.join("one/w.safetensors.preview.png").is_file(), "no preview");

    // The weight file alone (no state, no config beside it) records what sampling needs.
    let alone = d.join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(d.join("one/w.safetensors"), alone.join("w.safetensors")).unwrap();
    let sample = |args: &[&str]| common::run_bin(env!("CARGO_BIN_EXE_sample"), &alone, args);
    let base = ["--checkpoint", "w.safetensors", "--num", "2", "--device", "cpu"];
    let ok = sample(&[&base[..], &["--steps", "3", "--guidance", "2", "--timestep-shift", "0.5"]].concat());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("with euler (3 steps"));
    assert!(alone.join("samples.png").is_file());
    let ddim = common::refusal(&sample(&[&base[..], &["--sampler", "ddim"]].concat()));
    assert!(ddim.contains("ddim") && ddim.contains("flow model") && ddim.contains("euler or heun"), "{ddim}");
}

#[test]
fn ddpm_models_refuse_the_flow_samplers_and_flow_only_options_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg =
        common::write_tiny_config(d, "tiny.json", &[r#"{"train": {"model_save_path": "w.safetensors"}}"#]);
    run_ok(env!("CARGO_BIN_EXE_train"), d, &["--config", p(&cfg), "--max-steps", "1"]);
    let sample = |extra: &[&str]| {
        let args = [&["--checkpoint", "w.safetensors", "--num", "1", "--device", "cpu"][..], extra].concat();
        common::refusal(&common::run_bin(env!("CARGO_BIN_EXE_sample"), d, &args))
    };
    let heun = sample(&["--sampler", "heun"]);
    assert!(
        heun.contains("heun") && heun.contains("ddpm model") && heun.contains("ddpm, ddim or dpmpp_2m"),
        "{heun}"
    );
    let shift = sample(&["--sampler", "ddim", "--timestep-shift", "0.3"]);
    assert!(shift.contains("timestep shift") && shift.contains("flow samplers"), "{shift}");
}
