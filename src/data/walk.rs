//! Listing the image files below a folder, at any depth: hidden entries (names starting with
//! `.`) are skipped, symbolic links are followed but every folder is read once (so a link back
//! up the tree cannot loop), a broken link is skipped, and a folder that cannot be read is named
//! in one warning and left out. The file type comes from the directory entry, so a plain file
//! costs no `stat`: 200 000 files list in well under a second (BENCHMARKS.md).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::folder::has_image_extension;

/// What one folder holds directly: image files and sub-folders (links followed), each sorted.
#[derive(Default)]
pub(super) struct Entries {
    pub files: Vec<PathBuf>,
    pub folders: Vec<PathBuf>,
}

/// The entries of `dir`; `Err` with a one-line reason when it cannot be read. Entries that
/// vanish or break while being listed are skipped.
pub(super) fn entries(dir: &Path) -> Result<Entries, String> {
    let reason = |e: std::io::Error| format!("cannot read folder {}: {e}", dir.display());
    let mut found = Entries::default();
    for entry in fs::read_dir(dir).map_err(reason)? {
        let entry = entry.map_err(reason)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(mut kind) = entry.file_type() else { continue };
        if kind.is_symlink() {
            match fs::metadata(&path) {
                Ok(target) => kind = target.file_type(),
                Err(_) => continue, // a broken link
            }
        }
        if kind.is_dir() {
            found.folders.push(path);
        } else if kind.is_file() && has_image_extension(&path) {
            found.files.push(path);
        }
    }
    found.files.sort();
    found.folders.sort();
    Ok(found)
}

/// Every image file below `root` (which is read too), sorted by path, and one warning for each
/// folder that could not be read.
pub(super) fn images_below(root: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        // A folder reached twice (through a link) is read once: (device, inode) identify it.
        if let Ok(meta) = fs::metadata(&dir) {
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
        }
        match entries(&dir) {
            Ok(found) => {
                files.extend(found.files);
                // Reversed onto the stack, so that folders are read in sorted order.
                pending.extend(found.folders.into_iter().rev());
            }
            Err(reason) => warnings.push(format!("warning: {reason}; its images are left out")),
        }
    }
    files.sort();
    (files, warnings)
}
