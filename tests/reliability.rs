//! Faults and hostile input: SIGKILL at random moments never loses the last checkpoint, a
//! non-finite loss stops with the step named, and malformed configs, images and weight files
//! are refused with an error, never a panic.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use dit::rng::SplitMix64;

/// The tiny config with no end in sight (100 000 epochs): the runs here stop by --max-steps,
/// a failure or a kill.
const ENDLESS: &str = r#"{"train": {"epoch": 100000}}"#;

/// Writes the tiny config as `tiny.json` and the 16-image folder into `dir`; returns the folder.
fn setup(dir: &Path) -> std::path::PathBuf {
    write_tiny_config(dir, "tiny.json", &[ENDLESS]);
    panda_folder(dir)
}

#[test]
fn sigkill_at_random_moments_never_loses_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // Epochs of 2 steps: a checkpoint is written every few tens of milliseconds, so many
    // kills land during a write.
    let args = [&RUN[..], &base("w.pth")].concat();
    let mut rng = SplitMix64(42);
    let mut last_step = 0;
    let mut resumed = 0;
    let state = d.join("w.pth.state.safetensors");
    for round in 0..20 {
        let had_checkpoint = state.exists();
        // The first run lives to its first save, so that every later one has a checkpoint.
        let first_save = (round == 0).then_some(state.as_path());
        let start = kill_while_training(d, &args, first_save, rng.below(1000) as u64);
        if start.contains("resuming from") {
            resumed += 1;
        }
        assert_eq!(
            start.contains("resuming from"),
            had_checkpoint,
            "round {round} resumed iff it had a checkpoint"
        );
        if !state.exists() {
            assert_eq!(round, 0, "the checkpoint vanished in round {round}");
            continue;
        }
        // Both files load, and the state never goes backwards.
        let st = dit::checkpoint::state::load(&state).unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        dit::checkpoint::read_tensors(&d.join("w.pth")).unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        assert!(st.meta.step >= last_step, "round {round}: step went from {last_step} to {}", st.meta.step);
        last_step = st.meta.step;
        // No temporary files pile up: at most one per target (weights, state) left by a kill.
        let tmps = std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp-"))
            .count();
        assert!(tmps <= 2, "round {round}: {tmps} temporary files");
    }
    assert!(last_step > 0, "training never got going");
    assert!(resumed >= 15, "only {resumed} of 20 runs resumed");
}

/// Starts `train` in `d` with `args`, waits until it trains (and until `first_save` exists,
/// when given), lets it run `ms` more milliseconds and kills it (SIGKILL): the kill falls at a
/// random moment of the training itself, however long the start takes on a busy machine.
/// Returns its stdout up to the start of training.
fn kill_while_training(d: &Path, args: &[&str], first_save: Option<&Path>, ms: u64) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(d)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = training_start(&mut child);
    if let Some(file) = first_save {
        wait_until(&mut child, "the first checkpoint", || file.exists());
    }
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap();
    child.wait().unwrap();
    start
}

/// `--data`, `--checkpoint` and `--logdir` for a run in a folder made by [`setup`].
fn base(checkpoint: &str) -> [&str; 6] {
    ["--data", "imgs", "--checkpoint", checkpoint, "--logdir", "logs"]
}

/// A folder made by [`setup`] where a first run saved `checkpoint` after one epoch (2 steps).
fn after_one_epoch(checkpoint: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let out = run_train(dir.path(), &[&base(checkpoint)[..], &["--max-steps", "2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// Reads the child's stdout up to the line that ends the start ("checkpoints: …", printed just
/// before the first step) and returns what it read; panics if the child ends before it.
fn training_start(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut stdout = std::io::BufReader::new(child.stdout.as_mut().unwrap());
    let mut start = String::new();
    while !start.lines().any(|line| line.starts_with("checkpoints: ")) {
        let read = stdout.read_line(&mut start).unwrap();
        assert!(read > 0, "train ended before training:\n{start}");
    }
    start
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let dir = after_one_epoch("w.ot");
    let (d, base) = (dir.path(), base("w.ot"));
    let state = d.join("w.ot.state.safetensors");
    let before = (std::fs::read(d.join("w.ot")).unwrap(), std::fs::read(&state).unwrap());
    // An absurd learning rate drives the weights, then the loss, to infinity.
    let out = run_train(d, &[&base[..], &["--lr", "1e30", "--max-steps", "200"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the loss became") && err.contains("at step"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Epochs of 2 steps save as they go; whatever is on disk is finite and loads.
    let w = dit::checkpoint::read_tensors(&d.join("w.ot")).unwrap();
    assert!(
        w.iter().all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1),
        "a non-finite checkpoint was saved"
    );
    // Step 2 runs on the saved weights and moves them by about 1e30; step 3's loss overflows.
    // The first run saved at step 2, the end of epoch 1, and the next save would come at the
    // end of epoch 2 (step 4): both files are still those of step 2, byte for byte.
    assert!(err.contains("at step 3;"), "{err}");
    let after = (std::fs::read(d.join("w.ot")).unwrap(), std::fs::read(&state).unwrap());
    assert!(after == before, "the checkpoint of step 2 changed");
}

#[test]
fn malformed_configs_are_errors_not_panics() {
    let valid = std::fs::read_to_string(root().join("config.json")).unwrap();
    let mut rng = SplitMix64(7);
    let alphabet = b"{}[]\":,0123456789-.eE truefalsnul\\x";
    for _ in 0..3000 {
        let mut bytes = valid.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] = alphabet[rng.below(alphabet.len())],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.below(alphabet.len())]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let result = std::panic::catch_unwind(|| dit::Config::from_json(&text));
        assert!(result.is_ok(), "Config::from_json panicked on {text}");
    }
}

#[test]
fn malformed_images_and_weight_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Valid seeds to mutate: a PNG, a JPEG, a WebP, and a .pth written by our writer.
    let png_path = d.join("seed.png");
    image::RgbImage::from_raw(16, 16, dit::data::render_panda(0, 16)).unwrap().save(&png_path).unwrap();
    let jpg_path = d.join("seed.jpg");
    image::RgbImage::from_raw(16, 16, dit::data::render_panda(1, 16)).unwrap().save(&jpg_path).unwrap();
    let webp_path = d.join("seed.webp");
    image::RgbImage::from_raw(16, 16, dit::data::render_panda(2, 16)).unwrap().save(&webp_path).unwrap();
    let pth_path = d.join("seed.pth");
    let t = tch::Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu)).view([3, 4]);
    dit::checkpoint::write_tensors(&pth_path, &[("a.weight".to_string(), t)]).unwrap();
    let seeds = [(png_path, "png"), (jpg_path, "jpg"), (webp_path, "webp"), (pth_path, "pth")];
    let mut rng = SplitMix64(11);
    for (seed, ext) in &seeds {
        let original = std::fs::read(seed).unwrap();
        for round in 0..150 {
            let mut bytes = original.clone();
            match rng.below(3) {
                0 => bytes.truncate(rng.below(bytes.len())),
                _ => {
                    for _ in 0..1 + rng.below(8) {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next_u64() as u8;
                    }
                }
            }
            let case = d.join(format!("case{round}.{ext}"));
            std::fs::write(&case, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| {
                if *ext == "pth" {
                    let _ = dit::checkpoint::read_tensors(&case);
                } else {
                    let folder = d.join(format!("f{round}{ext}"));
                    std::fs::create_dir_all(&folder).unwrap();
                    std::fs::copy(&case, folder.join(format!("x.{ext}"))).unwrap();
                    if let Ok(ds) = dit::data::Dataset::open(p(&folder), 16) {
                        let _ = ds.load(0);
                    }
                }
            });
            assert!(result.is_ok(), "panicked on a mutated {ext} (round {round})");
        }
    }
}

/// The arguments of every `train` run here but the cuda check: the tiny config on the CPU, seed 1.
const RUN: [&str; 6] = ["--config", "tiny.json", "--device", "cpu", "--seed", "1"];

fn run_train(dir: &Path, extra: &[&str]) -> std::process::Output {
    run_bin(env!("CARGO_BIN_EXE_train"), dir, &[&RUN[..], extra].concat())
}

fn one_line_error(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure, got success:\n{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    err
}

#[test]
fn environment_problems_are_found_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = setup(d);
    std::fs::write(d.join("a_file"), b"").unwrap();
    let data = ["--data", p(&imgs)];
    // A checkpoint folder that cannot exist (its parent is a file); root ignores permissions,
    // so this is the unwritable case a test can build anywhere.
    let out = run_train(d, &[&data[..], &["--checkpoint", "a_file/w.ot", "--logdir", "logs"]].concat());
    assert!(one_line_error(&out).contains("a_file"));
    assert!(!d.join("logs").exists(), "nothing may start before the check");
    let out = run_train(d, &[&data[..], &["--checkpoint", "w.ot", "--logdir", "a_file/logs"]].concat());
    assert!(one_line_error(&out).contains("a_file/logs"));
    let out = run_train(d, &[&data[..], &["--checkpoint", "w.txt"]].concat());
    assert!(one_line_error(&out).contains("w.txt"));
    let out = run_train(d, &["--data", "no/such/folder", "--checkpoint", "w.ot"]);
    assert!(one_line_error(&out).contains("no/such/folder"));
    if !tch::Cuda::is_available() {
        let cuda = ["--config", "tiny.json", "--device", "cuda"];
        let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &[&cuda[..], &data].concat());
        assert!(one_line_error(&out).contains("--device cuda"));
    }
}

#[test]
fn a_checkpoint_of_another_model_or_a_corrupt_state_is_refused_untouched() {
    let dir = after_one_epoch("w.safetensors");
    let (d, base) = (dir.path(), base("w.safetensors"));
    let state = d.join("w.safetensors.state.safetensors");
    let saved = std::fs::read(&state).unwrap();
    let weights = std::fs::read(d.join("w.safetensors")).unwrap();

    // Another architecture: a different emb_size.
    write_tiny_config(d, "other.json", &[ENDLESS, r#"{"model": {"emb_size": 24}}"#]);
    let other = ["--config", "other.json", "--device", "cpu"];
    let out = run_bin(env!("CARGO_BIN_EXE_train"), d, &[&other[..], &base].concat());
    let line = one_line_error(&out);
    assert!(line.contains("model.emb_size = 16") && line.contains("now says 24"), "{line}");
    assert_eq!(std::fs::read(&state).unwrap(), saved, "the state file changed");
    assert!(std::fs::read(d.join("w.safetensors")).unwrap() == weights, "the weights changed");

    // Another block, and another process: each named with its values.
    for (change, said) in [
        (
            r#"{"model": {"arch": "lightning"}}"#,
            r#"model.arch = "original", and the config now says "lightning""#,
        ),
        (
            r#"{"diffusion": {"process": "flow"}, "train": {"preview": {"sampler": "euler"}}}"#,
            r#"diffusion.process = "ddpm", and the config now says "flow""#,
        ),
    ] {
        write_tiny_config(d, "other.json", &[ENDLESS, change]);
        let line = one_line_error(&run_bin(env!("CARGO_BIN_EXE_train"), d, &[&other[..], &base].concat()));
        assert!(line.contains(said), "{change}: {line}");
        assert_eq!(std::fs::read(&state).unwrap(), saved, "{change}: the state file changed");
    }

    // A truncated state file.
    let truncated = &saved[..saved.len() / 2];
    std::fs::write(&state, truncated).unwrap();
    let out = run_train(d, &[&base[..], &["--max-steps", "4"]].concat());
    assert!(one_line_error(&out).contains("w.safetensors.state.safetensors"));
    assert_eq!(std::fs::read(&state).unwrap().len(), saved.len() / 2, "the state file changed");
    assert!(std::fs::read(&state).unwrap() == truncated, "the state file changed");
    assert!(std::fs::read(d.join("w.safetensors")).unwrap() == weights, "the weights changed");

    // A weight file that is not one.
    std::fs::remove_file(&state).unwrap();
    std::fs::write(d.join("w.safetensors"), b"garbage").unwrap();
    let out = run_train(d, &[&base[..], &["--max-steps", "4"]].concat());
    assert!(one_line_error(&out).contains("w.safetensors"));
    assert_eq!(std::fs::read(d.join("w.safetensors")).unwrap(), b"garbage");
}

// A save that fails (a full disk, a read-only or unwritable folder) is tested in
// tests/writers.rs, on a tmpfs the test mounts; a leftover temporary folder at the target's old
// temporary name no longer stops a save (every write has a name of its own), also tested there.

#[test]
fn running_out_of_memory_is_one_line_naming_the_batch_size_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Naive attention at 256² materialises 16·6·4096² floats (6.4 GB) per block: more than the
    // 9 GB of address space allowed here once libtorch is loaded, so the first step fails.
    std::fs::write(
        d.join("big.json"),
        r#"{"model": {"img_size": 256}, "runtime": {"attention": "naive"},
            "train": {"data_path": "builtin:pandas", "batch_size": 16, "num_workers": 1, "preview": {"every_epochs": 0}}}"#,
    )
    .unwrap();
    let train = env!("CARGO_BIN_EXE_train");
    let script = format!(
        "ulimit -v 9000000 && exec {train} --config big.json --checkpoint w.ot --logdir logs --device cpu --max-steps 1"
    );
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(d).output().unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("ran out of memory for train.batch_size 16 at step 0"), "{err}");
    assert!(err.contains("nothing was saved"), "{err}");
    assert!(!d.join("w.ot").exists() && !d.join("w.ot.state.safetensors").exists());
}

/// Offsets of the "uncompressed size" field of every zip header (local file headers and the
/// central directory) in `bytes`.
fn zip_size_fields(bytes: &[u8]) -> Vec<usize> {
    let mut fields = vec![];
    for at in 0..bytes.len().saturating_sub(30) {
        match &bytes[at..at + 4] {
            b"PK\x03\x04" => fields.push(at + 22),
            b"PK\x01\x02" => fields.push(at + 24),
            _ => {}
        }
    }
    fields
}

#[test]
fn damaged_pth_archives_are_errors_not_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pth");
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = dit::Dit::new(&vs.root(), &tiny(&[]).model);
    dit::checkpoint::write_tensors(&good, &dit::checkpoint::named_variables(&vs)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    assert!(dit::checkpoint::read_tensors(&good).is_ok());
    let bad = dir.path().join("bad.pth");
    let read = |damaged: &[u8], what: &str| {
        std::fs::write(&bad, damaged).unwrap();
        let result = std::panic::catch_unwind(|| dit::checkpoint::read_tensors(&bad).map(|t| t.len()));
        result.unwrap_or_else(|_| panic!("{what}: reading panicked"))
    };
    // Every record declaring 4 GiB: reserving that under the address-space limit the
    // out-of-memory test uses aborted the process; it must be a one-line error.
    let fields = zip_size_fields(&bytes);
    assert!(fields.len() >= 4, "found {} zip headers", fields.len());
    let mut absurd = bytes.clone();
    for &at in &fields {
        absurd[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    }
    std::fs::write(&bad, &absurd).unwrap();
    std::fs::write(dir.path().join("tiny.json"), tiny_config(&[])).unwrap();
    let convert = env!("CARGO_BIN_EXE_convert");
    let script = format!("ulimit -v 9000000 && exec {convert} bad.pth out.ot --config tiny.json");
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("declares 4294967280 bytes, more than the whole file"), "{err}");
    // Random damage: 1 to 8 bytes overwritten anywhere, or a size field set to a random value.
    let mut rng = SplitMix64(7);
    for round in 0..1500 {
        let mut damaged = bytes.clone();
        if round % 3 == 0 {
            let at = fields[rng.below(fields.len())];
            damaged[at..at + 4].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes());
        } else {
            for _ in 0..=rng.below(8) {
                let at = rng.below(damaged.len());
                damaged[at] = rng.next_u64() as u8;
            }
        }
        let _ = read(&damaged, &format!("round {round}"));
    }
}
