//! A folder of image files as a labelled list: every png/jpg/jpeg/webp file (any letter case),
//! sorted by path. Under [`ClassLayout::Folders`] the sub-folders holding images are the
//! classes, as in torchvision's `ImageFolder` (each class takes the images at any depth below
//! its folder); under [`ClassLayout::None`] every image below the folder is label 0.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::walk::{entries, images_below};
use crate::config::ClassLayout;

/// File extensions (compared without regard to case) that a folder scan picks up.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// The image files of a data folder, one label each, the class names by label, and a warning
/// for each folder that could not be read.
pub(super) struct Folder {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
    pub warnings: Vec<String>,
}

impl Folder {
    /// Lists the images of `root` as `layout` says. Under `Folders`, a folder whose sub-folders
    /// hold images gives one class per such sub-folder (sorted by name, labels 0..K-1; loose
    /// files at the top are ignored with a warning); otherwise every image directly in the
    /// folder gets label 0 and the one class is named after the folder. Hidden entries (names
    /// starting with `.`) are skipped.
    pub(super) fn scan(root: &Path, layout: ClassLayout) -> Result<Folder> {
        let shown = root.display();
        let meta = match fs::metadata(root) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("data folder {shown} does not exist")
            }
            Err(e) => return Err(e).with_context(|| format!("reading data folder {shown}")),
        };
        ensure!(meta.is_dir(), "data path {shown} is not a folder");
        let folder = match layout {
            ClassLayout::None => {
                let (files, warnings) = images_below(root);
                Folder::one_class(root, files, warnings)
            }
            ClassLayout::Folders => Folder::by_sub_folder(root)?,
        };
        ensure!(
            !folder.paths.is_empty(),
            "no image files ({}) found in data folder {shown}",
            IMAGE_EXTENSIONS.join(", ")
        );
        Ok(folder)
    }

    /// The `Folders` layout (see [`Folder::scan`]).
    fn by_sub_folder(root: &Path) -> Result<Folder> {
        let top = entries(root).map_err(anyhow::Error::msg)?;
        let mut classes = Vec::new();
        let mut warnings = Vec::new();
        for sub in top.folders {
            let (files, unread) = images_below(&sub);
            warnings.extend(unread);
            if !files.is_empty() {
                classes.push((folder_name(&sub), files));
            }
        }
        if classes.is_empty() {
            return Ok(Folder::one_class(root, top.files, warnings));
        }
        if !top.files.is_empty() {
            warnings.push(format!(
                "warning: ignoring {} image file(s) directly in {}: its sub-folders are the classes",
                top.files.len(),
                root.display()
            ));
        }
        Ok(Folder::of_classes(classes, warnings))
    }

    /// Every file of `files` with label 0, the class named after `root`.
    fn one_class(root: &Path, files: Vec<PathBuf>, warnings: Vec<String>) -> Folder {
        let labels = vec![0; files.len()];
        Folder { paths: files, labels, class_names: vec![folder_name(root)], warnings }
    }

    /// One class per (name, files), labelled in the given order.
    fn of_classes(classes: Vec<(String, Vec<PathBuf>)>, warnings: Vec<String>) -> Folder {
        let mut folder = Folder { paths: Vec::new(), labels: Vec::new(), class_names: Vec::new(), warnings };
        for (label, (name, files)) in classes.into_iter().enumerate() {
            folder.labels.extend(std::iter::repeat_n(label as i64, files.len()));
            folder.paths.extend(files);
            folder.class_names.push(name);
        }
        folder
    }
}

/// Whether `path` ends with one of [`IMAGE_EXTENSIONS`].
pub(super) fn has_image_extension(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known))
}

/// The last component of `root`, resolving "." and ".." through the file system.
fn folder_name(root: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(root)
        .filter(|n| n != "." && n != "..")
        .or_else(|| root.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| root.display().to_string())
}
