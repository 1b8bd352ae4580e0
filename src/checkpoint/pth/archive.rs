//! The zip container of a `torch.save` file: its records, under one top folder.

use std::io::Read;
use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Reads the zip entries of a torch.save archive; the pickle is `<prefix>/data.pkl`.
pub(super) struct Archive {
    zip: zip::ZipArchive<std::fs::File>,
    prefix: String,
    /// Bytes of the whole file: no record of it can hold more (torch.save stores them
    /// uncompressed, and this build reads no compressed ones).
    file_len: u64,
}

impl Archive {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let zip = zip::ZipArchive::new(file).map_err(|_| {
            anyhow::anyhow!("not a zip archive (files from torch.save before PyTorch 1.6 are not supported)")
        })?;
        let pkl = zip
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .context("no data.pkl in the archive")?
            .to_string();
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        Ok(Self { zip, prefix, file_len })
    }

    pub(super) fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let mut entry = self.zip.by_name(&full).with_context(|| format!("missing record {full}"))?;
        // The header's size is untrusted: reserving it as such lets one damaged field abort
        // the process on allocation.
        let declared = entry.size();
        ensure!(
            declared <= self.file_len,
            "record {full} declares {declared} bytes, more than the whole file ({} bytes): a damaged archive",
            self.file_len
        );
        let mut bytes = Vec::with_capacity(declared as usize);
        entry
            .by_ref()
            .take(declared)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading record {full}"))?;
        Ok(bytes)
    }
}
