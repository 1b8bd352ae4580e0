//! A folder of image files as a labelled list: every png/jpg/jpeg file (any letter case),
//! sorted by path; sub-folders holding images are classes, as in torchvision's `ImageFolder`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// File extensions (compared without regard to case) that a folder scan picks up.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files of a data folder, one label each, and the class names by label.
pub(super) struct Folder {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
}

impl Folder {
    /// Lists the images of `root`. A folder whose sub-folders hold images gives one class per
    /// such sub-folder (sorted by name, labels 0..K-1; loose files at the top are ignored with a
    /// warning); otherwise every image directly in the folder gets label 0 and the one class is
    /// named after the folder. Hidden entries (names starting with `.`) are skipped; only one
    /// level of sub-folders is read.
    pub(super) fn scan(root: &Path) -> Result<Folder> {
        let shown = root.display();
        let meta = match fs::metadata(root) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("data folder {shown} does not exist")
            }
            Err(e) => return Err(e).with_context(|| format!("reading data folder {shown}")),
        };
        ensure!(meta.is_dir(), "data path {shown} is not a folder");

        let (loose, subfolders) = list_folder(root)?;
        let mut classes = Vec::new();
        for sub in subfolders {
            let (files, _) = list_folder(&sub)?;
            if !files.is_empty() {
                classes.push((folder_name(&sub), files));
            }
        }
        if classes.is_empty() {
            ensure!(
                !loose.is_empty(),
                "no image files ({}) found in data folder {shown}",
                IMAGE_EXTENSIONS.join(", ")
            );
            let labels = vec![0; loose.len()];
            return Ok(Folder { paths: loose, labels, class_names: vec![folder_name(root)] });
        }
        if !loose.is_empty() {
            eprintln!(
                "warning: ignoring {} image file(s) directly in {shown}: its sub-folders are the classes",
                loose.len()
            );
        }
        Ok(Folder::of_classes(classes))
    }

    /// One class per (name, files), labelled in the given order.
    fn of_classes(classes: Vec<(String, Vec<PathBuf>)>) -> Folder {
        let mut folder = Folder { paths: Vec::new(), labels: Vec::new(), class_names: Vec::new() };
        for (label, (name, files)) in classes.into_iter().enumerate() {
            folder.labels.extend(std::iter::repeat_n(label as i64, files.len()));
            folder.paths.extend(files);
            folder.class_names.push(name);
        }
        folder
    }
}

/// The image files (sorted by path) and the sub-folders (sorted by name) directly in `dir`.
fn list_folder(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let context = || format!("reading folder {}", dir.display());
    let mut files = Vec::new();
    let mut folders = Vec::new();
    for entry in fs::read_dir(dir).with_context(context)? {
        let path = entry.with_context(context)?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        // is_dir / is_file follow symbolic links; a broken link is neither and is skipped.
        if path.is_dir() {
            folders.push(path);
        } else if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    files.sort();
    folders.sort();
    Ok((files, folders))
}

fn has_image_extension(path: &Path) -> bool {
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
