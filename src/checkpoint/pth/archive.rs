//! The zip container of a `torch.save` file: its records, under one top folder.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Reads the zip entries of a torch.save archive; the pickle is `<prefix>/data.pkl`.
pub(super) struct Archive {
    zip: zip::ZipArchive<std::fs::File>,
    prefix: String,
}

impl Archive {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let zip = zip::ZipArchive::new(file).map_err(|_| {
            anyhow::anyhow!("not a zip archive (files from torch.save before PyTorch 1.6 are not supported)")
        })?;
        let pkl = zip
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .context("no data.pkl in the archive")?
            .to_string();
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        Ok(Self { zip, prefix })
    }

    pub(super) fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let mut entry = self.zip.by_name(&full).with_context(|| format!("missing record {full}"))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("reading record {full}"))?;
        Ok(bytes)
    }
}
