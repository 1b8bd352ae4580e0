//! Where the FID Inception network's weights are: pytorch-fid's published file
//! `pt_inception-2015-12-05-6726825d.pth` (the TensorFlow graph of 2015-12-05, ported), in the
//! folder the caller names (`--inception-dir`), else `$DIT_INCEPTION_DIR`, else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/dit/inception`. A file already there is used as it is, as
//! torch.hub uses its cache (so a user's own copy needs no network); a missing one is downloaded
//! from pytorch-fid's release (`$DIT_INCEPTION_URL` replaces the base URL) and kept only when
//! its sha256 starts with the digits its name carries, as torch.hub checks it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::download::{self, Expected};

/// The published file's name; its last dash-separated part is the start of its sha256.
pub const FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// Where pytorch-fid publishes it.
pub const DEFAULT_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights";

/// Environment variable naming the folder when the caller names none.
pub const DIR_VAR: &str = "DIT_INCEPTION_DIR";

/// Environment variable replacing [`DEFAULT_URL`] (a mirror, or a local server in tests).
pub const URL_VAR: &str = "DIT_INCEPTION_URL";

/// The weight file in the folder [`folder`] picks from `dir` and the environment, downloaded
/// first when it is missing.
pub fn locate(dir: Option<&Path>) -> Result<PathBuf> {
    let folder = folder_from(dir, |name| std::env::var_os(name))?;
    let base =
        std::env::var(URL_VAR).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_URL.to_string());
    locate_in(&folder, &base)
}

/// As [`locate`], in `folder` itself, downloading from `base_url`.
pub fn locate_in(folder: &Path, base_url: &str) -> Result<PathBuf> {
    locate_named(folder, base_url, FILE)
}

/// `folder/<file>` as it is when present, else downloaded from `<base_url>/<file>` and checked
/// against the sha256 prefix its name carries (torch.hub's `name-<hex>.ext` convention).
pub fn locate_named(folder: &Path, base_url: &str, file: &str) -> Result<PathBuf> {
    let path = folder.join(file);
    if path.try_exists().with_context(|| format!("cannot look for {}", path.display()))? {
        return Ok(path);
    }
    let prefix = download::hub_hash_prefix(file)
        .with_context(|| format!("{file}: the name carries no sha256 prefix (name-<hex>.ext)"))?;
    let url = format!("{}/{file}", base_url.trim_end_matches('/'));
    download::fetch(&url, file, Expected::Sha256Prefix(prefix), folder)
}

/// The folder of the weight file (see the module documentation), reading the environment
/// through `var`.
pub fn folder_from(explicit: Option<&Path>, var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    download::folder_from(explicit, "--inception-dir", DIR_VAR, "inception", var)
}
