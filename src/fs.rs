//! Writing files so that a crash never leaves half of one: [`write_atomic`].

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Runs `write` on a temporary path beside `path`, fsyncs the result and renames it over
/// `path`: a crash at any moment leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    let file_name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    // Keep the extension last: some writers pick their format from it. One fixed name per
    // target, so a write cut short by a crash is overwritten by the next one, not piled up.
    let tmp = dir.join(format!(".tmp-{}", file_name.to_string_lossy()));
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()?;
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
