//! The weight files of the pretrained tiny autoencoders published in
//! github.com/madebyollin/taesd: a variant `<name>` is the pair `<name>_encoder.pth` and
//! `<name>_decoder.pth` in one folder. This module decides which folder, fetches the files whose
//! sha256 is pinned here (TAEF2) on first use, and hashes every file it hands out, since a run
//! records which autoencoder its latents came from.
//!
//! The folder is, first match wins: the one the caller names (`--autoencoder-dir`),
//! `$DIT_AUTOENCODER_DIR`, then `${XDG_CACHE_HOME:-$HOME/.cache}/dit/autoencoders`. A missing
//! pinned file is downloaded into that same folder (from `$DIT_AUTOENCODER_URL`, by default the
//! repository's raw files) through a temporary file that is renamed into place only once its
//! sum matches. The other variants are never downloaded: nothing here could vouch for their
//! bytes, so the user puts them into the folder.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The variant names this module knows.
pub const VARIANTS: [&str; 5] = ["taesd", "taesdxl", "taesd3", "taef1", "taef2"];

/// Where the weights are published, for the messages that send a user to fetch them by hand.
pub const REPOSITORY: &str = "https://github.com/madebyollin/taesd";

/// Base URL of the downloads: the repository's files on its `main` branch, which keeps the
/// `.pth` files at its root.
pub const DEFAULT_URL: &str = "https://raw.githubusercontent.com/madebyollin/taesd/main";

/// Environment variable naming the folder when the caller names none.
pub const DIR_VAR: &str = "DIT_AUTOENCODER_DIR";

/// Environment variable replacing [`DEFAULT_URL`] (a mirror, or a local server in tests).
pub const URL_VAR: &str = "DIT_AUTOENCODER_URL";

/// The files fetched automatically, with the sha256 of the published bytes.
const PINNED: [(&str, &str); 2] = [
    ("taef2_encoder.pth", "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6"),
    ("taef2_decoder.pth", "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5"),
];

/// A server that accepts the connection but then stalls fails the download after this long
/// without a byte, rather than hanging a training run.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting gives up after this long (an unreachable mirror, a firewall dropping packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest body accepted: the published files are 2.7 MB each; this only stops a wrong URL
/// from filling the disk.
const MAX_BYTES: u64 = 1 << 30;

/// Where one variant's two files are, with their sha256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub encoder: PathBuf,
    pub decoder: PathBuf,
    pub encoder_sha256: String,
    pub decoder_sha256: String,
}

/// The published sha256 of `file` when this module pins it (and so may download it).
pub fn pinned_sha256(file: &str) -> Option<&'static str> {
    PINNED.iter().find(|(name, _)| *name == file).map(|(_, sum)| *sum)
}

/// The encoder's and the decoder's file names of variant `name`; an unknown name is an error
/// listing the known ones.
pub fn file_names(name: &str) -> Result<(String, String)> {
    ensure!(
        VARIANTS.contains(&name),
        "unknown autoencoder {name:?}: expected one of {}",
        VARIANTS.join(", ")
    );
    Ok((format!("{name}_encoder.pth"), format!("{name}_decoder.pth")))
}

/// Finds variant `name` in the folder [`folder`] picks from `dir` and the environment,
/// downloading a missing pinned file from [`base_url`] first.
pub fn locate(name: &str, dir: Option<&Path>) -> Result<Located> {
    let folder = folder(dir)?;
    locate_in(name, &folder, &base_url())
}

/// As [`locate`], in `folder` itself, downloading from `base_url`.
///
/// A pinned file already present is hashed and refused when its sum differs (a damaged or
/// replaced file is never used silently); an unpinned one must be present.
pub fn locate_in(name: &str, folder: &Path, base_url: &str) -> Result<Located> {
    let (encoder_file, decoder_file) = file_names(name)?;
    let find = |file: &str| -> Result<(PathBuf, String)> {
        let path = folder.join(file);
        let present = path.try_exists().with_context(|| format!("cannot look for {}", path.display()))?;
        match pinned_sha256(file) {
            Some(expected) if present => {
                let sum = sha256_file(&path)?;
                ensure!(
                    sum == expected,
                    "{} has sha256 {sum} but {file} should have {expected}: delete it to download it \
                     again from {}",
                    path.display(),
                    file_url(base_url, file)
                );
                Ok((path, sum))
            }
            Some(expected) => Ok((fetch_file(base_url, file, expected, folder)?, expected.to_string())),
            None if present => Ok((path.clone(), sha256_file(&path)?)),
            None => bail!(
                "autoencoder {name}: {} is missing: put {encoder_file} and {decoder_file} from {REPOSITORY} \
                 into {} (or name another folder with --autoencoder-dir or {DIR_VAR})",
                path.display(),
                folder.display()
            ),
        }
    };
    let (encoder, encoder_sha256) = find(&encoder_file)?;
    let (decoder, decoder_sha256) = find(&decoder_file)?;
    Ok(Located { encoder, decoder, encoder_sha256, decoder_sha256 })
}

/// The folder of the weight files: `explicit` when given, else `$DIT_AUTOENCODER_DIR`, else the
/// user cache `${XDG_CACHE_HOME:-$HOME/.cache}/dit/autoencoders`.
pub fn folder(explicit: Option<&Path>) -> Result<PathBuf> {
    folder_from(explicit, |name| std::env::var_os(name))
}

/// As [`folder`], reading environment variables through `var`. Empty variables count as unset
/// (as `${VAR:-default}` does in scripts/setup), and so does a relative `XDG_CACHE_HOME`, which
/// the XDG specification says to ignore.
pub fn folder_from(explicit: Option<&Path>, var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let set = |name: &str| var(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = set(DIR_VAR) {
        return Ok(dir);
    }
    let cache = match set("XDG_CACHE_HOME").filter(|dir| dir.is_absolute()) {
        Some(dir) => dir,
        None => set("HOME")
            .map(|home| home.join(".cache"))
            .with_context(|| format!("no folder for the autoencoder weights: pass --autoencoder-dir or set {DIR_VAR} (neither XDG_CACHE_HOME nor HOME is set)"))?,
    };
    Ok(cache.join("dit").join("autoencoders"))
}

/// The base URL of downloads: `$DIT_AUTOENCODER_URL` when set and not empty, else
/// [`DEFAULT_URL`].
pub fn base_url() -> String {
    base_url_from(|name| std::env::var_os(name))
}

/// As [`base_url`], reading environment variables through `var`.
pub fn base_url_from(var: impl Fn(&str) -> Option<OsString>) -> String {
    var(URL_VAR)
        .filter(|value| !value.is_empty())
        .map(|value| value.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

fn file_url(base_url: &str, file: &str) -> String {
    format!("{}/{file}", base_url.trim_end_matches('/'))
}

/// Downloads `<base_url>/<file>` into `dest_dir/<file>` (creating the folder), showing a
/// progress bar on standard error, and returns that path.
///
/// The bytes go to a hidden temporary file beside the target, renamed into place only when
/// their sha256 equals `expected_sha256`: a failed or corrupted download leaves neither the
/// file nor the temporary behind, and concurrent downloads (several ranks on one machine) each
/// write their own temporary. Every failure is one line naming the URL, the expected sum and
/// the folder, so a user without network can put the file there by hand.
pub fn fetch_file(base_url: &str, file: &str, expected_sha256: &str, dest_dir: &Path) -> Result<PathBuf> {
    let url = file_url(base_url, file);
    let by_hand = || format!("put {file} with sha256 {expected_sha256} into {}", dest_dir.display());
    let failed = |why: String| anyhow!("cannot download {url} ({}): {}", one_line(&why), by_hand());

    std::fs::create_dir_all(dest_dir).map_err(|e| failed(format!("cannot create the folder: {e}")))?;
    let mut partial =
        Partial::create(dest_dir, file).map_err(|e| failed(format!("cannot write a temporary file: {e}")))?;
    eprintln!("downloading {url} into {}", dest_dir.display());
    let sum = download(&url, file, partial.file()).map_err(|e| failed(format!("{e:#}")))?;
    if sum != expected_sha256 {
        bail!(
            "refused {url}: its sha256 is {sum}, expected {expected_sha256}; nothing was kept: {}",
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

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn file_names_follow_the_repository_and_unknown_names_are_refused() {
        assert_eq!(file_names("taef2").unwrap(), ("taef2_encoder.pth".into(), "taef2_decoder.pth".into()));
        assert_eq!(file_names("taesdxl").unwrap().1, "taesdxl_decoder.pth");
        let err = format!("{:#}", file_names("taef3").unwrap_err());
        assert!(err.contains("\"taef3\"") && err.contains("taesd, taesdxl, taesd3, taef1, taef2"), "{err}");
        // Only TAEF2 is pinned, both of its files.
        assert!(pinned_sha256("taef2_encoder.pth").is_some() && pinned_sha256("taef2_decoder.pth").is_some());
        assert_eq!(pinned_sha256("taesd_encoder.pth"), None);
    }

    #[test]
    fn folder_prefers_the_explicit_one_then_the_variable_then_the_cache() {
        let all = [(DIR_VAR, "/env/ae"), ("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
        let explicit = Path::new("/given");
        assert_eq!(folder_from(Some(explicit), env(&all)).unwrap(), explicit);
        assert_eq!(folder_from(None, env(&all)).unwrap(), Path::new("/env/ae"));
        assert_eq!(folder_from(None, env(&all[1..])).unwrap(), Path::new("/xdg/dit/autoencoders"));
        assert_eq!(folder_from(None, env(&all[2..])).unwrap(), Path::new("/home/u/.cache/dit/autoencoders"));
        // Empty means unset, and a relative XDG_CACHE_HOME is ignored.
        let blank = [(DIR_VAR, ""), ("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")];
        assert_eq!(folder_from(None, env(&blank)).unwrap(), Path::new("/home/u/.cache/dit/autoencoders"));
        let err = format!("{:#}", folder_from(None, env(&[])).unwrap_err());
        assert!(err.contains("--autoencoder-dir") && err.contains(DIR_VAR) && !err.contains('\n'), "{err}");
    }

    #[test]
    fn base_url_defaults_to_the_repository_and_the_variable_replaces_it() {
        assert_eq!(base_url_from(env(&[])), DEFAULT_URL);
        assert_eq!(base_url_from(env(&[(URL_VAR, "")])), DEFAULT_URL);
        assert_eq!(base_url_from(env(&[(URL_VAR, "http://mirror/ae/")])), "http://mirror/ae/");
        assert_eq!(file_url("http://mirror/ae/", "x.pth"), "http://mirror/ae/x.pth");
        assert_eq!(file_url(DEFAULT_URL, "taef2_encoder.pth"), format!("{DEFAULT_URL}/taef2_encoder.pth"));
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
    fn a_missing_unpinned_variant_says_which_files_go_where() {
        let dir = tempfile::tempdir().unwrap();
        // Never downloaded, so an unreachable URL is never tried.
        let err = format!("{:#}", locate_in("taesdxl", dir.path(), "http://127.0.0.1:9").unwrap_err());
        for part in
            ["taesdxl_encoder.pth", "taesdxl_decoder.pth", REPOSITORY, &dir.path().display().to_string()]
        {
            assert!(err.contains(part), "{part} not in: {err}");
        }
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // Once the user put both files there, they are used with their sums.
        std::fs::write(dir.path().join("taesdxl_encoder.pth"), b"abc").unwrap();
        std::fs::write(dir.path().join("taesdxl_decoder.pth"), b"").unwrap();
        let found = locate_in("taesdxl", dir.path(), "http://127.0.0.1:9").unwrap();
        assert_eq!(found.encoder, dir.path().join("taesdxl_encoder.pth"));
        assert_eq!(found.encoder_sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(found.decoder_sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
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
