//! The trainer end to end on tiny settings: exact resume, reproducibility, weights-only
//! starts, signals, the TensorBoard tags (read back by the real `tensorboard` package), and
//! Adam against PyTorch's.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::*;
use dit::config::{Loss, LossWeighting, Prediction};
use tch::{Device, Kind, Tensor};

/// The tiny config with every addition to the original switched on: 3 epochs of
/// `builtin:pandas` on 2 workers, EMA, a cosine schedule after 2 warm-up steps, histograms
/// every 2 steps and a 10-step DDIM preview of 4 images after every epoch.
const TRAIN: &str = r#"{
  "train": {"num_workers": 2, "epoch": 3, "ema_decay": 0.9, "lr_schedule": "cosine", "warmup_steps": 2,
            "histogram_every": 2, "preview": {"sampler": "ddim", "steps": 10, "every_epochs": 1, "num": 4}}
}"#;

fn train(dir: &Path, extra: &[&str]) -> Output {
    let cfg = dir.join("tiny.json");
    if !cfg.exists() {
        write_tiny_config(dir, "tiny.json", &[TRAIN]);
    }
    let args = [&["--config", p(&cfg), "--device", "cpu", "--seed", "5"][..], extra].concat();
    run_ok(env!("CARGO_BIN_EXE_train"), dir, &args)
}

fn weights(path: &Path) -> Vec<(String, Tensor)> {
    let mut w = dit::checkpoint::read_tensors(path).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn assert_identical(a: &Path, b: &Path) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

#[test]
fn restart_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An epoch of builtin:pandas is 4096 images / 8 = 512 batches, too slow here: stop with
    // --max-steps inside epoch 1, and restart across nothing but the step count.
    train(d, &["--checkpoint", "one/w.safetensors", "--logdir", "one/logs", "--max-steps", "7"]);
    let first = train(d, &["--checkpoint", "two/w.safetensors", "--logdir", "two/logs", "--max-steps", "3"]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("reached --max-steps at step 3"));
    let second = train(d, &["--checkpoint", "two/w.safetensors", "--logdir", "two/logs", "--max-steps", "7"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("resuming from") && stdout.contains("at step 3"), "{stdout}");
    assert_identical(&d.join("one/w.safetensors"), &d.join("two/w.safetensors"));
    // EMA and Adam's moments too.
    let (a, b) = (
        dit::checkpoint::state::load(&d.join("one/w.safetensors.state.safetensors")).unwrap(),
        dit::checkpoint::state::load(&d.join("two/w.safetensors.state.safetensors")).unwrap(),
    );
    assert_eq!(a.meta.step, 7);
    assert_eq!(
        (a.meta.step, a.meta.epoch, a.meta.batch_in_epoch),
        (b.meta.step, b.meta.epoch, b.meta.batch_in_epoch)
    );
    for g in dit::checkpoint::state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            assert!(t.equal(&b.group(g).unwrap()[name]), "{g}.{name} differs after the restart");
        }
    }
    // Already there: a rerun does nothing and changes nothing.
    let again = train(d, &["--checkpoint", "two/w.safetensors", "--logdir", "two/logs", "--max-steps", "7"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert_identical(&d.join("one/w.safetensors"), &d.join("two/w.safetensors"));
}

/// Every group of two state files (raw weights, EMA, Adam's moments) and their counters are
/// identical.
fn assert_same_state(a: &Path, b: &Path) {
    let (a, b) = (dit::checkpoint::state::load(a).unwrap(), dit::checkpoint::state::load(b).unwrap());
    let counters = |m: &dit::checkpoint::state::TrainMeta| (m.step, m.epoch, m.batch_in_epoch, m.adam_step);
    assert_eq!(counters(&a.meta), counters(&b.meta));
    for g in dit::checkpoint::state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            assert!(t.equal(&b.group(g).unwrap()[name]), "{g}.{name} differs");
        }
    }
}

/// 3 epochs of 4 steps (16 images, batch 4) under the cosine schedule with 2 warm-up steps,
/// no previews: every step's learning rate depends on the schedule's horizon.
fn train_folder(d: &Path, checkpoint: &str, extra: &[&str]) -> Output {
    let common = ["--data", "imgs", "--batch-size", "4", "--preview-every", "0", "--checkpoint", checkpoint];
    let logdir = format!("{checkpoint}.logs");
    train(d, &[&common[..], &["--logdir", &logdir], extra].concat())
}

#[test]
fn restarts_anywhere_follow_one_schedule_whatever_max_steps_and_epochs_say() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    panda_folder(d);
    train_folder(d, "one/w.safetensors", &["--epochs", "3"]);
    // Stopped inside the warm-up, then in the cosine while asking for 2 epochs, then resumed
    // to the end with 3: the horizon stays the 12 steps of the run's first start.
    train_folder(d, "two/w.safetensors", &["--epochs", "3", "--max-steps", "1"]);
    let second = train_folder(d, "two/w.safetensors", &["--epochs", "2", "--max-steps", "6"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("keeps its horizon of 12 steps"), "{stdout}");
    let last = train_folder(d, "two/w.safetensors", &["--epochs", "3"]);
    assert!(String::from_utf8_lossy(&last.stdout).contains("finished 3 epochs"));
    assert_identical(&d.join("one/w.safetensors"), &d.join("two/w.safetensors"));
    let state = |run: &str| d.join(format!("{run}/w.safetensors.state.safetensors"));
    assert_same_state(&state("one"), &state("two"));
    let meta = dit::checkpoint::state::load(&state("two")).unwrap().meta;
    assert_eq!((meta.step, meta.schedule_steps, meta.adam_step), (12, Some(12), Some(12)));

    // A horizon set on resume moves the schedule from there on, and says so.
    train_folder(d, "three/w.safetensors", &["--epochs", "3", "--max-steps", "6"]);
    let moved = train_folder(d, "three/w.safetensors", &["--epochs", "3", "--schedule-steps", "30"]);
    assert!(String::from_utf8_lossy(&moved.stdout).contains("moves from 12 to 30 steps"));
    let w = |run: &str| weights(&d.join(format!("{run}/w.safetensors")));
    let differs = w("one").iter().zip(&w("three")).any(|((_, a), (_, b))| !a.equal(b));
    assert!(differs, "a longer horizon keeps the learning rate higher over steps 6..12");
}

/// Writes `n` of the built-in pandas as 16×16 PNGs into `dir/imgs/<class>/`, named from `first`.
fn class_folder(dir: &Path, class: &str, first: usize, n: usize) {
    let folder = dir.join("imgs").join(class);
    std::fs::create_dir_all(&folder).unwrap();
    for i in first..first + n {
        let px = dit::data::render_panda(i, 16);
        image::RgbImage::from_raw(16, 16, px).unwrap().save(folder.join(format!("{i:02}.png"))).unwrap();
    }
}

#[test]
fn resuming_on_other_classes_is_refused_unless_declared_and_a_grown_class_restarts_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.json"), tiny_config(&[TRAIN, r#"{"model": {"label_num": 3}}"#])).unwrap();
    class_folder(d, "cat", 0, 8);
    class_folder(d, "dog", 8, 8);
    let args =
        ["--data", "imgs", "--batch-size", "4", "--preview-every", "0", "--checkpoint", "w.safetensors"];
    train(d, &[&args[..], &["--max-steps", "1"]].concat());
    let state = d.join("w.safetensors.state.safetensors");
    let before = (std::fs::read(&state).unwrap(), std::fs::read(d.join("w.safetensors")).unwrap());

    class_folder(d, "ant", 16, 4);
    let cfg = d.join("tiny.json");
    let common = ["--config", p(&cfg), "--device", "cpu", "--seed", "5"];
    let refused =
        run_bin(env!("CARGO_BIN_EXE_train"), d, &[&common[..], &args, &["--max-steps", "2"]].concat());
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("2 [cat, dog]") && err.contains("3 [ant, cat, dog]"), "{err}");
    let after = (std::fs::read(&state).unwrap(), std::fs::read(d.join("w.safetensors")).unwrap());
    assert!(before == after, "a refused start writes nothing");

    let allowed = train(d, &[&args[..], &["--max-steps", "2", "--allow-data-change"]].concat());
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        stdout.contains("classes 2 [cat, dog] → 3 [ant, cat, dog]") && stdout.contains("20 images, was 16"),
        "{stdout}"
    );
    let meta = dit::checkpoint::state::load(&state).unwrap().meta;
    assert_eq!((meta.step, meta.classes.len(), meta.data.unwrap().images), (2, 3, 20));

    // Same classes, one more image: a note, and the epoch starts again from its first batch.
    class_folder(d, "dog", 30, 1);
    let grown = train(d, &[&args[..], &["--max-steps", "3"]].concat());
    let stdout = String::from_utf8_lossy(&grown.stdout);
    assert!(stdout.contains("21 images, was 20") && stdout.contains("(epoch 1, batch 0)"), "{stdout}");
    let meta = dit::checkpoint::state::load(&state).unwrap().meta;
    assert_eq!((meta.step, meta.batch_in_epoch), (3, 1));
}

#[test]
fn a_moved_single_class_folder_resumes_where_it_stopped_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    panda_folder(d); // imgs/: one class, named after the folder
                     // One run of 3 steps against 2 steps, the folder copied elsewhere under another name, 1 more.
    let args = |data: &str, ckpt: &str, steps: &str| {
        let logs = format!("{ckpt}.logs");
        let common = ["--batch-size", "4", "--preview-every", "0", "--epochs", "3"];
        [&common[..], &["--data", data, "--checkpoint", ckpt, "--logdir", &logs, "--max-steps", steps]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let go = |a: Vec<String>| train(d, &a.iter().map(String::as_str).collect::<Vec<_>>());
    go(args("imgs", "one/w.safetensors", "3"));
    go(args("imgs", "two/w.safetensors", "2"));
    std::fs::create_dir_all(d.join("elsewhere/pandas_copy")).unwrap();
    for entry in std::fs::read_dir(d.join("imgs")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, d.join("elsewhere/pandas_copy").join(path.file_name().unwrap())).unwrap();
    }
    let moved = go(args("elsewhere/pandas_copy", "two/w.safetensors", "3"));
    let stdout = String::from_utf8_lossy(&moved.stdout);
    assert!(stdout.contains("now named 1 [pandas_copy] (was 1 [imgs])"), "{stdout}");
    assert!(stdout.contains("(epoch 1, batch 2)") && !stdout.contains("restarts"), "{stdout}");
    assert_identical(&d.join("one/w.safetensors"), &d.join("two/w.safetensors"));
    let state = |run: &str| d.join(format!("{run}/w.safetensors.state.safetensors"));
    assert_same_state(&state("one"), &state("two"));
}

/// Writes `n` of the built-in pandas (from index 0) as 16×16 PNGs into `dir/imgs`.
fn flat_folder(dir: &Path, n: usize) {
    let folder = dir.join("imgs");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        let px = dit::data::render_panda(i, 16);
        image::RgbImage::from_raw(16, 16, px).unwrap().save(folder.join(format!("{i:02}.png"))).unwrap();
    }
}

/// Weights, EMA and Adam's moments agree within `limit` relative (per tensor), leaving out
/// the attention key bias, whose exact gradient is zero (softmax ignores a shift of all the
/// logits of a row): what a step computes for it is rounding noise, which Adam's normalisation
/// turns into full-size updates whenever two runs round differently.
fn assert_close_states(a: &Path, b: &Path, limit: f64) {
    let (a, b) = (dit::checkpoint::state::load(a).unwrap(), dit::checkpoint::state::load(b).unwrap());
    assert_eq!((a.meta.step, a.meta.epoch), (b.meta.step, b.meta.epoch));
    for g in dit::checkpoint::state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            if name.ends_with("k_emb.bias") {
                continue;
            }
            let d = rel_diff(t, &b.group(g).unwrap()[name]);
            assert!(d <= limit, "{g}.{name}: relative difference {d:e} > {limit:e}");
        }
    }
}

#[test]
fn four_micro_batches_of_8_train_as_one_batch_of_32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 40 images: each epoch is a step of 32 and a short one of 8 (one micro-batch).
    flat_folder(d, 40);
    let common = ["--data", "imgs", "--epochs", "2", "--preview-every", "0"];
    train(
        d,
        &[&common[..], &["--batch-size", "32", "--checkpoint", "one/w.safetensors", "--logdir", "one/l"]]
            .concat(),
    );
    let out = train(
        d,
        &[
            &common[..],
            &[
                "--batch-size",
                "8",
                "--grad-accum-steps",
                "4",
                "--checkpoint",
                "acc/w.safetensors",
                "--logdir",
                "acc/l",
            ],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("gradient accumulation: 4 micro-batches of 8 = 32 images per step"), "{stdout}");
    let state = |run: &str| d.join(format!("{run}/w.safetensors.state.safetensors"));
    assert_eq!(dit::checkpoint::state::load(&state("acc")).unwrap().meta.step, 4);
    assert_close_states(&state("one"), &state("acc"), 1e-5);
}

#[test]
fn accumulated_runs_resume_bit_for_bit_at_step_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    flat_folder(d, 40);
    let common = [
        "--data",
        "imgs",
        "--epochs",
        "2",
        "--preview-every",
        "0",
        "--batch-size",
        "8",
        "--grad-accum-steps",
        "3",
    ];
    let run = |name: &str, extra: &[&str]| {
        let (checkpoint, logdir) = (format!("{name}/w.safetensors"), format!("{name}/l"));
        train(d, &[&common[..], &["--checkpoint", &checkpoint, "--logdir", &logdir], extra].concat())
    };
    run("straight", &[]);
    run("resumed", &["--max-steps", "1"]);
    let out = run("resumed", &["--max-steps", "3"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("at step 1 (epoch 1, batch 1)"));
    run("resumed", &[]);
    let state = |run: &str| d.join(format!("{run}/w.safetensors.state.safetensors"));
    assert_same_state(&state("straight"), &state("resumed"));
    assert_identical(&d.join("straight/w.safetensors"), &d.join("resumed/w.safetensors"));
}

#[test]
fn accumulation_steps_of_zero_or_beyond_the_data_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    flat_folder(d, 16);
    write_tiny_config(d, "tiny.json", &[TRAIN]);
    let cfg = d.join("tiny.json");
    let run = |extra: &[&str]| {
        let args = [&["--config", p(&cfg), "--device", "cpu", "--data", "imgs", "--logdir", "l"][..], extra]
            .concat();
        let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    assert!(run(&["--grad-accum-steps", "0"]).contains("train.grad_accum_steps must be a positive integer"));
    let err = run(&["--grad-accum-steps", "3", "--batch-size", "8"]);
    assert!(err.contains("train.grad_accum_steps 3 × train.batch_size 8 = 24 images per optimizer step, more than the 16 images"), "{err}");
    assert!(!d.join("checkpoints/dit_train.ot").exists(), "nothing is saved");
}

#[test]
fn full_epochs_log_every_tag_and_previews() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 16-image folder so that epochs are 2 steps long.
    let imgs = panda_folder(d);
    let out = train(d, &["--data", p(&imgs), "--checkpoint", "w.pth", "--logdir", "logs", "--epochs", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DIT(") && stdout.contains("epoch 3/3: mean loss"), "{stdout}");
    assert!(d.join("w.pth").exists() && d.join("w.pth.preview.png").exists());

    let summary: serde_json::Value =
        serde_json::from_str(&golden(&["tb_tags", "--config", p(&d.join("logs"))])).unwrap();
    let scalars = &summary["scalars"];
    let batch = scalars["Loss/batch"].as_array().unwrap();
    assert_eq!(batch.len(), 6, "one Loss/batch per step");
    assert!(batch.iter().all(|e| e[1].as_f64().unwrap() > 0.0 && e[1].as_f64().unwrap() < 5.0));
    assert_eq!(batch.iter().map(|e| e[0].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(scalars["Loss/epoch"].as_array().unwrap().len(), 3);
    for tag in ["train/lr", "train/grad_norm", "train/images_per_sec"] {
        assert!(!scalars[tag].as_array().unwrap().is_empty(), "{tag}");
    }
    for tag in ["noise_prediction", "target_noise"] {
        let h = summary["histograms"][tag].as_array().unwrap();
        assert_eq!(
            h.iter().map(|e| e[0].as_i64().unwrap()).collect::<Vec<_>>(),
            [0, 2, 4],
            "{tag} every 2 steps"
        );
        assert!(h.iter().all(|e| e[1].as_f64().unwrap() == (8 * 3 * 16 * 16) as f64), "{tag}: {h:?}");
    }
    let images = summary["images"]["Generated Images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "one preview per epoch");
    // 16 states of 16 px in 8 columns, 2 px padding: 8·18 + 2 by 2·18 + 2.
    assert_eq!((images[0][1].as_i64().unwrap(), images[0][2].as_i64().unwrap()), (146, 38));
    assert!(summary["graph"].as_bool().unwrap() && summary["graph_nodes"].as_i64().unwrap() > 20);

    // The .pth it wrote continues in PyTorch: golden.py loads it strictly.
    let cfg = d.join("tiny.json");
    tch::manual_seed(0);
    let x = Tensor::randn([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    python_forward(d, &cfg, &d.join("w.pth"), &x, 0, 10);
}

#[test]
fn weights_only_checkpoint_starts_with_a_fresh_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_tiny_config(d, "tiny.json", &[TRAIN]);
    golden(&["init", "--config", p(&cfg), "--seed", "3", "--out", p(&d.join("orig.pth"))]);
    let given = weights(&d.join("orig.pth"));
    // One step at a negligible learning rate: the weights it saves are those it started from.
    let one_step = ["--logdir", "logs", "--max-steps", "1", "--lr", "1e-9"];
    let out = train(d, &[&["--checkpoint", "orig.pth"][..], &one_step].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("starting from the weights in orig.pth with a fresh optimizer"), "{stdout}");
    assert!(d.join("orig.pth.state.safetensors").exists());
    let st = dit::checkpoint::state::load(&d.join("orig.pth.state.safetensors")).unwrap();
    let distance = |found: &[(String, Tensor)]| {
        assert_eq!(
            found.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            given.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        found.iter().zip(&given).map(|((_, a), (_, b))| max_abs_diff(a, b)).fold(0.0, f64::max)
    };
    let group = |name: &str| {
        st.group(name).unwrap().iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<Vec<_>>()
    };
    assert!(distance(&weights(&d.join("orig.pth"))) < 1e-6, "the saved weights are not the given ones");
    assert!(distance(&group("model")) < 1e-6 && distance(&group("ema")) < 1e-6);
    // The same step without the file starts from the model's own random weights, far away.
    train(d, &[&["--checkpoint", "fresh.pth"][..], &one_step].concat());
    assert!(distance(&weights(&d.join("fresh.pth"))) > 0.1);
    // A fresh optimizer: the counters start from 0, and Adam's moments are those of one step
    // from zero, m = (1 − β1)·g and v = (1 − β2)·g², so m² / v = 0.01 / 0.001 = 10.
    assert_eq!((st.meta.step, st.meta.epoch, st.meta.batch_in_epoch), (1, 0, 1));
    let v = st.group("adam_v").unwrap();
    for (name, m) in st.group("adam_m").unwrap() {
        let significant = v[name].gt(1e-30);
        let ratio = (m * m / &v[name]).masked_select(&significant);
        if ratio.numel() == 0 {
            continue; // no gradient above rounding noise in this tensor
        }
        let off = (ratio - 10.0).abs().max().double_value(&[]);
        assert!(off < 1e-3, "{name}: m²/v is off 10 by {off}");
    }
}

#[test]
fn sigterm_saves_and_exits_within_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_config(d, "tiny.json", &[TRAIN]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(d)
        .args(["--config", "tiny.json", "--device", "cpu", "--checkpoint", "w.ot", "--logdir", "logs"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way: the first step's loss is in the TensorBoard log (the
    // first epoch is 512 steps, a minute or more, so the signal lands inside it).
    wait_for_event(&mut child, &d.join("logs"), "Loss/batch");
    let pid = child.id() as i32;
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed().as_secs_f64() < 5.0, "took {:?} to stop", started.elapsed());
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted at step"), "{stdout}");
    let st = dit::checkpoint::state::load(&d.join("w.ot.state.safetensors")).unwrap();
    assert!(st.meta.step > 0 && st.meta.epoch == 0);
}

/// Waits until an event file in `logdir` holds `tag` (the writer does not buffer).
fn wait_for_event(child: &mut Child, logdir: &Path, tag: &str) {
    let holds_tag = |path: std::path::PathBuf| {
        std::fs::read(path).is_ok_and(|bytes| bytes.windows(tag.len()).any(|w| w == tag.as_bytes()))
    };
    wait_until(child, &format!("{tag} in {}", logdir.display()), || {
        std::fs::read_dir(logdir).into_iter().flatten().flatten().any(|entry| holds_tag(entry.path()))
    });
}

#[test]
fn adam_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tch::manual_seed(4);
    let shapes: [&[i64]; 3] = [&[7, 5], &[5], &[2, 3, 4]];
    let params: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let grads: Vec<[Tensor; 2]> = shapes
        .iter()
        .map(|s| {
            [
                Tensor::randn(*s, (Kind::Float, Device::Cpu)),
                Tensor::randn(*s, (Kind::Float, Device::Cpu)) * 1e-3,
            ]
        })
        .collect();
    let mut named: Vec<(String, Tensor)> = vec![];
    for (i, p) in params.iter().enumerate() {
        named.push((format!("param.p{i}"), p.detach().copy()));
        named.push((format!("grad1.p{i}"), grads[i][0].copy()));
        named.push((format!("grad2.p{i}"), grads[i][1].copy()));
    }
    Tensor::write_safetensors(&named, d.join("in.safetensors")).unwrap();
    golden(&[
        "adam",
        "--config",
        "-",
        "--inputs",
        p(&d.join("in.safetensors")),
        "--out",
        p(&d.join("out.safetensors")),
    ]);
    let py = read(&d.join("out.safetensors"));

    let mut adam = dit::optim::Adam::new(&params);
    for step in 0..2 {
        dit::optim::zero_grad(&params);
        // d/dp Σ p·g = g exactly.
        let loss: Tensor = params.iter().zip(&grads).map(|(p, g)| (p * &g[step]).sum(Kind::Float)).sum();
        loss.backward();
        adam.step(&params, 1e-3);
    }
    for (i, p) in params.iter().enumerate() {
        let err = max_abs_diff(p, &py[&format!("param.p{i}")]);
        assert!(err <= 1e-7, "p{i}: {err:e}");
        assert!(max_abs_diff(&adam.exp_avg[i], &py[&format!("exp_avg.p{i}")]) == 0.0);
        assert!(max_abs_diff(&adam.exp_avg_sq[i], &py[&format!("exp_avg_sq.p{i}")]) <= 1e-12);
    }
}

#[test]
fn sample_quality_is_logged_every_eval_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = panda_folder(d); // 16 images: epochs of 2 steps
    let eval = r#"{"train": {"eval": {"every_epochs": 2, "num": 16}, "epoch": 4}}"#;
    write_tiny_config(d, "tiny.json", &[TRAIN, eval]);
    let out = train(d, &["--data", p(&imgs), "--checkpoint", "w.ot", "--logdir", "logs"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("sample quality: SWD").count(), 2, "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&golden(&["tb_tags", "--config", p(&d.join("logs"))])).unwrap();
    let swd = summary["scalars"]["Quality/swd"].as_array().unwrap();
    assert_eq!(
        swd.iter().map(|e| e[0].as_i64().unwrap()).collect::<Vec<_>>(),
        [1, 3],
        "after epochs 2 and 4"
    );
    assert!(swd.iter().all(|e| e[1].as_f64().unwrap() > 0.0), "{swd:?}");
    // 16×16 images have one pyramid level of side 16.
    assert_eq!(summary["scalars"]["Quality/swd_16"].as_array().unwrap().len(), 2);
    // Too few images to measure is a config error.
    let few = tiny_config(&[r#"{"train": {"eval": {"every_epochs": 1, "num": 4}}}"#]);
    std::fs::write(d.join("few.json"), few).unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(d)
        .args(["--config", "few.json", "--data", p(&imgs), "--checkpoint", "few.ot", "--logdir", "few"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("train.eval.num must be at least 16"), "{err}");
    assert!(!d.join("few.ot").exists(), "nothing is written before the check");
}

#[test]
fn the_prediction_target_is_recorded_used_by_sample_and_fixed_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let objective =
        ["--prediction", "v", "--loss", "l2", "--loss-weighting", "min_snr", "--min-snr-gamma", "4"];
    let out = train(d, &[&["--checkpoint", "v.ot", "--max-steps", "2"][..], &objective].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = String::from_utf8_lossy(&out.stdout);
    assert!(start.contains("objective: v prediction, L2 loss, Min-SNR-4 weighting"), "{start}");
    let st = dit::checkpoint::state::load(&d.join("v.ot.state.safetensors")).unwrap();
    let c = &st.meta.config;
    assert_eq!((c.diffusion.prediction, c.train.loss), (Prediction::V, Loss::L2));
    assert_eq!((c.train.loss_weighting, c.train.min_snr_gamma), (LossWeighting::MinSnr, 4.0));

    // `sample` reads the target from the state; a weight file alone means ε unless told.
    let sample = |args: &[&str]| {
        let base = ["--device", "cpu", "--sampler", "dpmpp_2m", "--steps", "5", "--num", "2", "--seed", "1"];
        run_ok(env!("CARGO_BIN_EXE_sample"), d, &[&base[..], args].concat())
    };
    let stdout = |o: Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let state = stdout(sample(&["--checkpoint", "v.ot", "--tensor-out", "state.safetensors"]));
    assert!(state.contains("predicting v") && state.contains("dpmpp_2m (5 steps)"), "{state}");
    std::fs::copy(d.join("v.ot"), d.join("alone.ot")).unwrap();
    let cfg = ["--config", "tiny.json", "--no-ema"];
    let alone = stdout(sample(
        &[&["--checkpoint", "alone.ot", "--tensor-out", "eps.safetensors"][..], &cfg].concat(),
    ));
    assert!(alone.contains("predicting epsilon"), "{alone}");
    let told = &["--checkpoint", "alone.ot", "--prediction", "v", "--tensor-out", "told.safetensors"];
    assert!(stdout(sample(&[&told[..], &cfg].concat())).contains("predicting v"));
    let raw = stdout(sample(&["--checkpoint", "v.ot", "--no-ema", "--tensor-out", "raw.safetensors"]));
    assert!(raw.contains("weights from v.ot"), "{raw}");
    let images = |f: &str| read(&d.join(f)).remove("images").unwrap();
    assert!(
        images("told.safetensors").equal(&images("raw.safetensors")),
        "--prediction v on the weights alone"
    );
    assert!(max_abs_diff(&images("eps.safetensors"), &images("told.safetensors")) > 1e-3);

    // A state records its target: another --prediction is refused naming both; the same one
    // is fine.
    let base = ["--device", "cpu", "--sampler", "ddim", "--steps", "2", "--num", "1", "--checkpoint", "v.ot"];
    let refused = run_bin(
        env!("CARGO_BIN_EXE_sample"),
        d,
        &[&base[..], &["--prediction", "epsilon", "--out", "no.png"]].concat(),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.trim_end().lines().count() == 1, "{err}");
    assert!(err.contains("--prediction epsilon") && err.contains("trained to predict v"), "{err}");
    assert!(!d.join("no.png").exists());
    let same =
        stdout(sample(&["--checkpoint", "v.ot", "--prediction", "v", "--tensor-out", "same.safetensors"]));
    assert!(same.contains("predicting v"), "{same}");
    assert!(images("same.safetensors").equal(&images("state.safetensors")));

    // The target is part of the diffusion section, which a resume must not change.
    let again = ["--config", "tiny.json", "--device", "cpu", "--checkpoint", "v.ot", "--max-steps", "3"];
    let other = run_bin(env!("CARGO_BIN_EXE_train"), d, &[&again[..], &["--prediction", "x0"]].concat());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("diffusion") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

/// The tiny config on `imgs/` below `d` (`panda_folder`: 16 images, epochs of 2 steps), with
/// `overrides`; returns the config's path.
fn pandas_config(d: &Path, name: &str, overrides: &[&str]) -> std::path::PathBuf {
    let imgs = panda_folder(d);
    let data = format!(r#"{{"train": {{"data_path": {:?}}}}}"#, p(&imgs));
    write_tiny_config(d, name, &[&[data.as_str()][..], overrides].concat())
}

/// Trains `config` into `checkpoint` with `extra` flags, where a folder sits in the way of the
/// weight file, so the run's first save writes the state file and then fails, ending the run:
/// returns the epoch lines printed before, and the epoch the state file records.
fn train_until_first_save(d: &Path, config: &Path, checkpoint: &str, extra: &[&str]) -> (Vec<String>, i64) {
    let path = d.join(checkpoint);
    if path.is_file() {
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::create_dir_all(path.join("in the way")).unwrap();
    let base = ["--config", p(config), "--device", "cpu", "--checkpoint", checkpoint, "--logdir", "logs"];
    let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &[&base[..], extra].concat());
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(!out.status.success() && err.lines().count() == 1 && err.contains(checkpoint), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let epoch_line = |l: &&str| l.starts_with("epoch ") && l.contains(": mean loss");
    let state = dit::checkpoint::state::load(&dit::checkpoint::state::state_path(&path)).unwrap();
    (stdout.lines().filter(epoch_line).map(str::to_string).collect(), state.meta.epoch)
}

/// "epoch 3/100" of each epoch line ("epoch 3/100: mean loss …").
fn epochs_done(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| l.split(':').next().unwrap().to_string()).collect()
}

#[test]
fn save_every_counts_the_runs_epochs_and_the_last_epoch_always_saves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = pandas_config(d, "tiny.json", &[r#"{"train": {"epoch": 7, "save_every": 3}}"#]);
    // The first save of a fresh run comes after epoch 3: epochs 1 and 2 saved nothing.
    let (lines, saved) = train_until_first_save(d, &cfg, "first/w.safetensors", &["--epochs", "100"]);
    assert_eq!(epochs_done(&lines), ["epoch 1/100", "epoch 2/100", "epoch 3/100"]);
    assert_eq!(saved, 3);
    // Seven epochs: saved after 3 and 6, and after 7, the last, though 3 does not divide it.
    let args = ["--config", p(&cfg), "--device", "cpu", "--checkpoint", "w.safetensors"];
    run_ok(env!("CARGO_BIN_EXE_train"), d, &args);
    let st = dit::checkpoint::state::load(&d.join("w.safetensors.state.safetensors")).unwrap();
    assert_eq!((st.meta.epoch, st.meta.step, st.meta.batch_in_epoch), (7, 14, 0));
    // Resumed for more epochs, the count goes on from the run's first epoch: 8 does not save,
    // 9 does (a count from the resume would save after 10).
    let (lines, saved) = train_until_first_save(d, &cfg, "w.safetensors", &["--epochs", "100"]);
    assert_eq!(epochs_done(&lines), ["epoch 8/100", "epoch 9/100"]);
    assert_eq!(saved, 9);
}

#[test]
fn save_every_minutes_alone_saves_by_time_never_by_the_epoch_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = pandas_config(d, "tiny.json", &[r#"{"train": {"epoch": 4}}"#]);
    // An hour never passes here: only the last epoch saves.
    let hour = ["--save-every-minutes", "60"];
    let (lines, saved) = train_until_first_save(d, &cfg, "hour/w.safetensors", &hour);
    assert_eq!(epochs_done(&lines), ["epoch 1/4", "epoch 2/4", "epoch 3/4", "epoch 4/4"]);
    assert_eq!(saved, 4);
    // A microsecond has passed by the end of the first epoch.
    let tiny = ["--save-every-minutes", "0.00000001"];
    let (lines, saved) = train_until_first_save(d, &cfg, "often/w.safetensors", &tiny);
    assert_eq!((epochs_done(&lines), saved), (vec!["epoch 1/4".to_string()], 1));
    // Either setting triggers when both are set.
    let both = [&tiny[..], &["--save-every", "3"]].concat();
    let (lines, saved) = train_until_first_save(d, &cfg, "both/w.safetensors", &both);
    assert_eq!((epochs_done(&lines), saved), (vec!["epoch 1/4".to_string()], 1));
}

#[test]
fn ctrl_c_between_saves_saves_the_step_it_stopped_at() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = pandas_config(d, "tiny.json", &[r#"{"train": {"epoch": 100000, "save_every": 1000}}"#]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(d)
        .args(["--config", p(&cfg), "--device", "cpu", "--checkpoint", "w.ot", "--logdir", "logs"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap);
    lines
        .by_ref()
        .find(|l| l.starts_with("epoch 3/") && l.contains(": mean loss"))
        .expect("the run ended before its third epoch");
    let state = d.join("w.ot.state.safetensors");
    assert!(!state.exists(), "saved before its 1000th epoch");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let rest: Vec<String> = lines.collect();
    assert!(child.wait().unwrap().success());
    let last = rest.iter().find(|l| l.starts_with("interrupted at step ")).expect("no interruption line");
    let step: i64 = last["interrupted at step ".len()..].split(':').next().unwrap().parse().unwrap();
    let st = dit::checkpoint::state::load(&state).unwrap();
    assert!(step >= 6 && st.meta.epoch >= 3, "{last}");
    assert_eq!(st.meta.step, step, "{last}");
    assert!(d.join("w.ot").is_file());
}

#[test]
fn bad_save_intervals_are_one_line_errors_naming_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (r#"{"train": {"save_every": 0}}"#, "train.save_every", "got 0"),
        (r#"{"train": {"save_every_minutes": -2.5}}"#, "train.save_every_minutes", "got -2.5"),
        (r#"{"train": {"save_every_minutes": "5"}}"#, "train.save_every_minutes", "\"5\""),
    ];
    for (json, field, value) in cases {
        std::fs::write(d.join("bad.json"), json).unwrap();
        let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &["--config", "bad.json", "--device", "cpu"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{json}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(field) && err.contains(value), "{json}: {err}");
    }
    let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &["--save-every-minutes", "0", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim_end().lines().count() == 1 && err.contains("train.save_every_minutes"), "{err}");
    assert!(!d.join("checkpoints").exists());
}

#[test]
fn a_safetensors_weight_file_alone_samples_what_its_state_samples_with_no_ema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    class_folder(d, "bamboo", 0, 8);
    class_folder(d, "snow", 8, 8);
    let run = r#"{"model": {"label_num": 2}, "diffusion": {"max_t": 60, "beta_end": 0.03},
                  "train": {"data_path": "imgs", "ema_decay": 0.9}}"#;
    write_tiny_config(d, "run.json", &[run]);
    let train_args = ["--config", "run.json", "--device", "cpu", "--checkpoint", "w.safetensors"];
    run_ok(
        env!("CARGO_BIN_EXE_train"),
        d,
        &[&train_args[..], &["--prediction", "x0", "--max-steps", "3"]].concat(),
    );
    let meta = dit::checkpoint::read_metadata(&d.join("w.safetensors")).unwrap();
    assert_eq!(meta[dit::checkpoint::CLASSES_KEY], r#"["bamboo","snow"]"#);
    // The file alone, in a folder with no config.json, and beside a config.json that says
    // otherwise (only a named --config overrides what the file records).
    for (folder, config) in [("alone", None), ("misled", Some(r#"{"diffusion": {"max_t": 1000}}"#))] {
        std::fs::create_dir(d.join(folder)).unwrap();
        std::fs::copy(d.join("w.safetensors"), d.join(folder).join("w.safetensors")).unwrap();
        if let Some(text) = config {
            std::fs::write(d.join(folder).join("config.json"), text).unwrap();
        }
    }
    // DDPM takes all max_t steps, so the schedule, the target and the label name all matter.
    let sample = |cwd: &Path, checkpoint: &str, out: &str, extra: &[&str]| {
        let base =
            ["--checkpoint", checkpoint, "--device", "cpu", "--num", "3", "--seed", "7", "--label", "snow"];
        run_bin(env!("CARGO_BIN_EXE_sample"), cwd, &[&base[..], &["--out", out], extra].concat())
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let state = ok(sample(d, "w.safetensors.state.safetensors", "grid.png", &["--no-ema"]));
    assert!(state.contains("raw weights of step 3") && state.contains("predicting x0"), "{state}");
    let grid = std::fs::read(d.join("grid.png")).unwrap();
    for folder in ["alone", "misled"] {
        let alone = ok(sample(&d.join(folder), "w.safetensors", "grid.png", &[]));
        assert!(alone.contains("predicting x0") && alone.contains("label 1 (snow)"), "{alone}");
        assert!(alone.contains("ddpm (60 steps)"), "{alone}");
        assert_eq!(std::fs::read(d.join(folder).join("grid.png")).unwrap(), grid, "{folder}: other images");
    }
    // The recorded target fixes what the output means: another --prediction is refused in one
    // line naming both; the same one is accepted.
    let alone = d.join("alone");
    let refused = sample(&alone, "w.safetensors", "no.png", &["--prediction", "epsilon"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.trim_end().lines().count() == 1, "{err}");
    assert!(err.contains("--prediction epsilon") && err.contains("trained to predict x0"), "{err}");
    assert!(err.contains("w.safetensors") && !alone.join("no.png").exists(), "{err}");
    ok(sample(&alone, "w.safetensors", "x0.png", &["--prediction", "x0"]));
    // A named --config decides the sections, as it does for a training state.
    std::fs::write(alone.join("eps.json"), tiny_config(&[r#"{"model": {"label_num": 2}}"#])).unwrap();
    let named = ok(sample(&alone, "w.safetensors", "eps.png", &["--config", "eps.json"]));
    assert!(named.contains("ddpm (100 steps)") && named.contains("predicting epsilon"), "{named}");
}

#[test]
fn malformed_recorded_metadata_is_one_line_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let metadata = std::collections::HashMap::from([(
        dit::checkpoint::DIFFUSION_KEY.to_string(),
        r#"{"max_t": 60, "prediction": "x1"}"#.to_string(),
    )]);
    dit::checkpoint::write_tensors_with(&d.join("bad.safetensors"), &[("w".to_string(), t)], metadata)
        .unwrap();
    let out =
        run_bin(env!("CARGO_BIN_EXE_sample"), d, &["--checkpoint", "bad.safetensors", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim_end().lines().count() == 1, "{err}");
    assert!(err.contains("bad.safetensors") && err.contains("dit_diffusion"), "{err}");
}
