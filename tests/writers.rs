//! Files that survive what a shared machine does to them: two runs encoding one latent store at
//! once, temporary files left by other writers, a full disk (a small tmpfs this test mounts, as
//! root, which CI is: a test that cannot mount fails), and kills at random moments of the
//! encoding and the saves.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use dit::checkpoint::state;
use dit::rng::SplitMix64;

/// 64² images in taesd's latent space (8² latents, patch 2), mirrored too, batch 4, no previews:
/// the store of 32 images is 32 × 2 × 4·8·8 float16 = 32 KiB.
const LATENT: &str = r#"{
  "model": {"img_size": 64, "patch_size": 2, "autoencoder": "taesd"},
  "train": {"epoch": 100000, "batch_size": 4, "ema_decay": 0.9, "hflip": true, "data_path": "imgs"}
}"#;

/// A folder with `n` 64² images in `imgs`, the autoencoder in `ae` and the config `latent.json`.
fn setup(n: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..n {
        let px = dit::data::render_panda(i as usize, 64);
        image::RgbImage::from_raw(64, 64, px).unwrap().save(imgs.join(format!("{i:02}.png"))).unwrap();
    }
    autoencoder(dir.path(), 11);
    write_tiny_config(dir.path(), "latent.json", &[LATENT]);
    dir
}

/// The `train` command of a run of `latent.json` into `checkpoint` (logs beside it unless
/// `extra` names a `--logdir`), then `extra`.
fn command(d: &Path, checkpoint: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.current_dir(d)
        .args(["--config", "latent.json", "--device", "cpu", "--seed", "3", "--autoencoder-dir", "ae"])
        .args(["--checkpoint", checkpoint])
        .args(extra)
        .env("OMP_NUM_THREADS", "1");
    if !extra.contains(&"--logdir") {
        c.args(["--logdir", &format!("{checkpoint}.logs")]);
    }
    c
}

fn train(d: &Path, checkpoint: &str, extra: &[&str]) -> String {
    let out = command(d, checkpoint, extra).output().unwrap();
    succeeded(&out)
}

/// stdout and stderr of a run that must have succeeded.
fn succeeded(out: &Output) -> String {
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The one latent store in `dir` (the folder holds nothing else).
fn the_store(dir: &Path) -> PathBuf {
    let files = names(dir);
    assert_eq!(files.len(), 1, "{} holds {files:?}", dir.display());
    assert!(files[0].ends_with(".safetensors") && !files[0].starts_with('.'), "{files:?}");
    dir.join(&files[0])
}

#[test]
fn two_runs_racing_to_encode_one_store_both_train_on_the_store_one_run_writes() {
    let dir = setup(32);
    let d = dir.path();
    train(d, "solo/w.safetensors", &["--max-steps", "1"]);
    let solo = std::fs::read(the_store(&d.join("solo/latents"))).unwrap();
    // Two runs into one folder, started together: their checkpoints differ, their store is one.
    let spawn = |name: &str| {
        command(d, &format!("race/{name}.safetensors"), &["--max-steps", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (succeeded(&a.wait_with_output().unwrap()), succeeded(&b.wait_with_output().unwrap()));
    for out in [&a, &b] {
        assert!(out.contains("reached --max-steps at step 2"), "{out}");
    }
    let store = the_store(&d.join("race/latents"));
    assert!(std::fs::read(&store).unwrap() == solo, "the raced store differs from one run's");
    // Later runs reuse it.
    let c = train(d, "race/c.safetensors", &["--max-steps", "1"]);
    assert!(c.contains("(reused)"), "{c}");
}

/// `name` as a temporary name of process `pid` of this machine.
fn temp_name_of(pid: u32, name: &str) -> String {
    let own = dit::fs::temp_name(name);
    let mut parts: Vec<&str> = own.splitn(4, '-').collect(); // ".tmp", machine, pid, rest
    let pid = pid.to_string();
    parts[2] = &pid;
    parts.join("-")
}

/// The pid of a process that has ended.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn leftover_temporary_files_and_folders_never_stop_a_run_and_only_dead_writers_are_cleaned() {
    let dir = setup(8);
    let d = dir.path();
    train(d, "w.safetensors", &["--max-steps", "1"]);
    let store = the_store(&d.join("latents"));
    let store_name = store.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&store).unwrap();
    let dead = dead_pid();
    // At the store's name and at the checkpoint's: an old-style file and folder, a running
    // writer's file on another machine (pid 1 runs everywhere), a dead writer's file and folder.
    let mut kept = vec![];
    let mut cleaned = vec![];
    for (folder, target) in [("latents", store_name.as_str()), (".", "w.safetensors.state.safetensors")] {
        let at = |n: &str| d.join(folder).join(n);
        std::fs::write(at(&format!(".tmp-{target}")), b"old style").unwrap();
        std::fs::create_dir_all(at(&format!(".tmp-x-{target}")).join("inside")).unwrap();
        std::fs::write(at(&format!(".tmp-00000000-1-0123456789abcdef-{target}")), b"another machine")
            .unwrap();
        kept.extend([at(&format!(".tmp-{target}")), at(&format!(".tmp-x-{target}"))]);
        kept.push(at(&format!(".tmp-00000000-1-0123456789abcdef-{target}")));
        let (file, folder) = (temp_name_of(dead, target), temp_name_of(dead, &format!("{target}.d")));
        std::fs::write(at(&file), b"dead").unwrap();
        std::fs::create_dir_all(at(&folder).join("inside")).unwrap();
        cleaned.extend([at(&file), at(&folder)]);
    }
    let out = train(d, "w.safetensors", &["--max-steps", "2"]);
    assert!(out.contains("latents: encoding") && out.contains("reached --max-steps at step 2"), "{out}");
    for path in &kept {
        assert!(path.exists(), "{} was removed", path.display());
    }
    for path in &cleaned {
        assert!(!path.exists(), "{} was left", path.display());
    }
    dit::data::LatentStore::open(&store).unwrap();
}

/// A tmpfs of `bytes` mounted on `dir` while it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills what is free with a file, `filler`.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The temporary files under `dir` (none may be left by a failed write).
fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = vec![];
    for name in names(dir) {
        let path = dir.join(&name);
        if name.starts_with(".tmp-") {
            found.push(path.display().to_string());
        } else if path.is_dir() {
            found.extend(temporaries(&path));
        }
    }
    found
}

#[test]
fn a_full_disk_is_one_line_naming_the_file_and_what_it_needs_and_keeps_the_last_checkpoint() {
    let dir = setup(32);
    let d = dir.path();
    // The store (32 KiB and its header) does not fit in 16 KiB: refused before any encoding.
    let small = Tmpfs::mount(&d.join("small"), 16 * 1024);
    let err = refusal(&command(d, "small/w.safetensors", &["--max-steps", "1"]).output().unwrap());
    println!("{err}");
    assert!(err.contains("cannot write") && err.contains("small/latents/taesd-64-"), "{err}");
    assert!(
        err.contains("it needs about 3") && err.contains("KiB and") && err.contains("free there"),
        "{err}"
    );
    assert_eq!(temporaries(&small.0), Vec::<String>::new());
    assert!(!small.0.join("w.safetensors").exists());

    // Room for the store and a checkpoint; then the disk fills: the next save fails, and the
    // last checkpoint stays byte for byte.
    let fs = Tmpfs::mount(&d.join("fs"), 4 * 1024 * 1024);
    train(d, "fs/w.safetensors", &["--max-steps", "1", "--logdir", "logs"]);
    let (weights, state) = (fs.0.join("w.safetensors"), fs.0.join("w.safetensors.state.safetensors"));
    let before = (std::fs::read(&weights).unwrap(), std::fs::read(&state).unwrap());
    fs.fill();
    let out = command(d, "fs/w.safetensors", &["--max-steps", "8", "--logdir", "logs"]).output().unwrap();
    let err = refusal(&out);
    println!("{err}");
    assert!(err.contains("cannot write") && err.contains("fs/w.safetensors"), "{err}");
    assert!(err.contains("it needs about") && err.contains("No space left on device"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming from"), "it trained before saving");
    assert_eq!((std::fs::read(&weights).unwrap(), std::fs::read(&state).unwrap()), before);
    assert_eq!(temporaries(&fs.0), Vec::<String>::new());

    // The TensorBoard log on the full disk: one line naming its file.
    let err =
        refusal(&command(d, "w.safetensors", &["--max-steps", "1", "--logdir", "fs/logs"]).output().unwrap());
    println!("{err}");
    assert!(err.contains("cannot write fs/logs") && err.contains("free there"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

/// Every group of two training states holds the same tensors, and their counters agree.
fn assert_same_state(a: &Path, b: &Path) {
    let (a, b) = (state::load(a).unwrap(), state::load(b).unwrap());
    assert_eq!((a.meta.step, a.meta.epoch), (b.meta.step, b.meta.epoch));
    for g in state::GROUPS {
        for (name, t) in a.group(g).unwrap() {
            assert!(t.equal(&b.group(g).unwrap()[name]), "{g}.{name} differs");
        }
    }
}

#[test]
fn kills_during_encoding_and_saving_leave_a_whole_store_or_none_and_the_run_ends_as_one_never_killed() {
    let dir = setup(32);
    let d = dir.path();
    let reference = train(d, "ref/w.safetensors", &["--max-steps", "24"]);
    let store = std::fs::read(the_store(&d.join("ref/latents"))).unwrap();
    // How long the encoding took here ("encoded in 1.4 s"): even rounds are killed within it.
    let seconds: f64 = reference
        .split_once("encoded in ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("the reference run says how long it encoded");
    let mut rng = SplitMix64(7);
    let latents = d.join("k/latents");
    for round in 0..10 {
        let mut child = command(d, "k/w.safetensors", &["--max-steps", "24"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        read_until(&mut child, "latents: ");
        let ms = match round % 2 {
            0 => rng.below((seconds * 1000.0) as usize + 1),
            // Odd rounds: once the store is there, among the steps and the saves.
            _ => {
                while names(&latents).iter().all(|n| n.starts_with(".tmp-"))
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                rng.below(400)
            }
        };
        std::thread::sleep(std::time::Duration::from_millis(ms as u64));
        let _ = child.kill();
        child.wait().unwrap();
        for name in names(&latents).iter().filter(|n| !n.starts_with(".tmp-")) {
            let bytes = std::fs::read(latents.join(name)).unwrap();
            assert!(bytes == store, "round {round}: {name} is not the whole store");
        }
    }
    let out = train(d, "k/w.safetensors", &["--max-steps", "24"]);
    assert!(out.contains("reached --max-steps at step 24") || out.contains("nothing to do"), "{out}");
    assert_same_state(
        &d.join("ref/w.safetensors.state.safetensors"),
        &d.join("k/w.safetensors.state.safetensors"),
    );
}

/// Reads the child's stdout up to a line containing `text` (panics if it ends first) and
/// returns what it read; the rest of its output goes on being drained in the background.
fn read_until(child: &mut std::process::Child, text: &str) -> String {
    use std::io::{BufRead, Read};
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the run ended before {text:?}:\n{seen}");
        seen.push_str(&line);
        if line.contains(text) {
            std::thread::spawn(move || {
                std::io::copy(&mut stdout.get_mut().take(u64::MAX), &mut std::io::sink())
            });
            return seen;
        }
    }
}
