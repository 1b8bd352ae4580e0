//! Fetching a published weight file once: streamed to a temporary file beside its target with
//! a progress bar, hashed on the way, and renamed into place only when its sha256 is the one
//! expected. Used for the autoencoders' files (`autoencoder::files`) and the FID Inception
//! network's (`quality::inception`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// A server that accepts the connection but then stalls fails the download after this long
/// without a byte, rather than hanging a training run.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting gives up after this long (an unreachable mirror, a firewall dropping packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest body accepted: the published files are 100 MB at most; this only stops a wrong URL
/// from filling the disk.
const MAX_BYTES: u64 = 1 << 30;

/// What the downloaded bytes' sha256 must be.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'a> {
    /// All 64 hex digits (the autoencoder's pinned files).
    Sha256(&'a str),
    /// Its first hex digits, as torch.hub checks a file whose name carries them
    /// (`name-<digits>.ext`, e.g. pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`).
    Sha256Prefix(&'a str),
}

impl Expected<'_> {
    fn accepts(&self, sum: &str) -> bool {
        match self {
            Expected::Sha256(full) => sum == *full,
            Expected::Sha256Prefix(prefix) => sum.starts_with(prefix),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expected::Sha256(full) => format!("sha256 {full}"),
            Expected::Sha256Prefix(prefix) => format!("a sha256 starting {prefix}"),
        }
    }
}

/// The hash prefix torch.hub reads from a file name: the hex digits between the last `-` and
/// the first `.` after it (`pt_inception-2015-12-05-6726825d.pth` → `6726825d`).
pub fn hub_hash_prefix(file: &str) -> Option<&str> {
    let stem = &file[..file.find('.')?];
    let digits = &stem[stem.rfind('-')? + 1..];
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(digits)
}

/// The folder of a kind of weight files: `explicit` (named by the flag `flag`) when given, else
/// the environment variable `dir_var`, else the user cache
/// `${XDG_CACHE_HOME:-$HOME/.cache}/dit/<sub>`, reading variables through `var`. Empty variables
/// count as unset (as `${VAR:-default}` does in scripts/setup), and so does a relative
/// `XDG_CACHE_HOME`, which the XDG specification says to ignore.
pub fn folder_from(
    explicit: Option<&Path>,
    flag: &str,
    dir_var: &str,
    sub: &str,
    var: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf> {
    let set = |name: &str| var(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = set(dir_var) {
        return Ok(dir);
    }
    let cache = user_cache(var).with_context(|| {
        format!("no folder for the weight files: pass {flag} or set {dir_var} (neither XDG_CACHE_HOME nor HOME is set)")
    })?;
    Ok(cache.join(sub))
}

/// The project's user cache, `${XDG_CACHE_HOME:-$HOME/.cache}/dit` (an empty or relative
/// `XDG_CACHE_HOME` ignored), reading variables through `var`; None when neither is set.
pub fn user_cache(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    let cache = set("XDG_CACHE_HOME")
        .filter(|dir| dir.is_absolute())
        .or_else(|| set("HOME").map(|home| home.join(".cache")))?;
    Some(cache.join("dit"))
}

/// Downloads `url` into `dest_dir/<file>` (creating the folder), showing a progress bar on
/// standard error, and returns that path.
///
/// The bytes go to a hidden temporary file beside the target, renamed into place only when
/// their sha256 is what `expected` says: a failed or corrupted download leaves neither the
/// file nor the temporary behind, and concurrent downloads (several ranks on one machine) each
/// write their own temporary. Every failure is one line naming the URL, the expected sum and
/// the folder, so a user without network can put the file there by hand.
pub fn fetch(url: &str, file: &str, expected: Expected, dest_dir: &Path) -> Result<PathBuf> {
    let by_hand = || format!("put {file} with {} into {}", expected.describe(), dest_dir.display());
    let failed = |why: String| anyhow!("cannot download {url} ({}): {}", one_line(&why), by_hand());

    std::fs::create_dir_all(dest_dir).map_err(|e| failed(format!("cannot create the folder: {e}")))?;
    let mut partial =
        Partial::create(dest_dir, file).map_err(|e| failed(format!("cannot write a temporary file: {e}")))?;
    eprintln!("downloading {url} into {}", dest_dir.display());
    let sum = download(url, file, partial.file()).map_err(|e| failed(format!("{e:#}")))?;
    if !expected.accepts(&sum) {
        bail!(
            "refused {url}: its sha256 is {sum}, expected {}; nothing was kept: {}",
            expected.describe(),
            by_hand()
        );
    }
    let dest = dest_dir.join(file);
    partial.keep_as(&dest).map_err(|e| failed(format!("cannot move it into place: {e}")))?;
    Ok(dest)
}

/// Streams the body of `url` into `out`, hashing it on the way; returns the sha256.
fn download(url: &str, label: &str, out: &mut File) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(STALL_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .build()
        .into();
    let response = agent.get(url).call()?;
    let bar = download_bar(label, response.body().content_length());
    let mut reader = response.into_body().into_with_config().limit(MAX_BYTES).reader();
    let mut sink = Hashing { out, hasher: Sha256::new(), bar: &bar };
    let copied = io::copy(&mut reader, &mut sink);
    bar.finish_and_clear();
    copied?;
    let Hashing { out, hasher, .. } = sink;
    out.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

/// A byte-count bar on standard error (indicatif draws nothing when it is not a terminal);
/// a spinner when the server sends no length.
fn download_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{prefix} [{wide_bar}] {bytes}/{total_bytes} [{elapsed_precise}<{eta_precise}]",
        ),
        None => (ProgressBar::new_spinner(), "{prefix} {spinner} {bytes} [{elapsed_precise}]"),
    };
    let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
    bar.with_style(style).with_prefix(label.to_string())
}

/// A writer that hashes and counts what it passes on to `out`.
struct Hashing<'a> {
    out: &'a mut File,
    hasher: Sha256,
    bar: &'a ProgressBar,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A temporary file beside its target, deleted when dropped unless [`Partial::keep_as`] moved
/// it into place. Its name is unique to the process and the call, so two downloads of the same
/// file never write into each other.
struct Partial {
    path: PathBuf,
    file: Option<File>,
}

impl Partial {
    fn create(dir: &Path, file: &str) -> io::Result<Self> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{file}.{}-{n}.part", std::process::id()));
        let handle = File::options().write(true).create_new(true).open(&path)?;
        Ok(Self { path, file: Some(handle) })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until kept")
    }

    /// Renames the file to `dest` (replacing a copy another process may have finished first,
    /// which has the same verified bytes) and makes the rename durable.
    fn keep_as(mut self, dest: &Path) -> io::Result<()> {
        self.file.take().expect("open until kept").sync_all()?;
        std::fs::rename(&self.path, dest)?;
        self.path = PathBuf::new();
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The sha256 of the file at `path`, as 64 lower-case hex digits.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_prefix_is_the_hex_after_the_last_dash() {
        assert_eq!(hub_hash_prefix("pt_inception-2015-12-05-6726825d.pth"), Some("6726825d"));
        assert_eq!(hub_hash_prefix("resnet18-f37072fd.pth"), Some("f37072fd"));
        assert_eq!(hub_hash_prefix("weights.pth"), None);
        assert_eq!(hub_hash_prefix("a-XYZ.pth"), None);
        assert!(Expected::Sha256Prefix("6726825d").accepts("6726825d0000"));
        assert!(!Expected::Sha256Prefix("6726825d").accepts("6726825e0000"));
        assert!(Expected::Sha256("ab").accepts("ab") && !Expected::Sha256("ab").accepts("abc"));
    }

    #[test]
    fn sha256_of_a_file_is_lower_case_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = format!("{:#}", sha256_file(&dir.path().join("none")).unwrap_err());
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn a_partial_file_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dropped = Partial::create(dir.path(), "a.pth").unwrap();
        dropped.file().write_all(b"half").unwrap();
        let mut kept = Partial::create(dir.path(), "a.pth").unwrap();
        assert_ne!(dropped.path, kept.path);
        drop(dropped);
        kept.file().write_all(b"whole").unwrap();
        kept.keep_as(&dir.path().join("a.pth")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.pth"]);
        assert_eq!(std::fs::read(dir.path().join("a.pth")).unwrap(), b"whole");
    }
}
