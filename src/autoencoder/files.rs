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
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

pub use crate::download::sha256_file;
use crate::download::{self, Expected};

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

/// As [`folder`], reading environment variables through `var` ([`download::folder_from`]).
pub fn folder_from(explicit: Option<&Path>, var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    download::folder_from(explicit, "--autoencoder-dir", DIR_VAR, "autoencoders", var)
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

/// Downloads `<base_url>/<file>` into `dest_dir/<file>` when its sha256 is `expected_sha256`
/// ([`crate::download::fetch`]), and returns that path.
pub fn fetch_file(base_url: &str, file: &str, expected_sha256: &str, dest_dir: &Path) -> Result<PathBuf> {
    download::fetch(&file_url(base_url, file), file, Expected::Sha256(expected_sha256), dest_dir)
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
}
