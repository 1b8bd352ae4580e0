//! What a run trained on, and the check when it resumes: the class names (label order), the
//! image count and a fingerprint of the file list are saved with every checkpoint
//! ([`DataIdentity`]); a start whose classes differ from the saved ones stops before anything
//! is written, unless the change is declared (`--allow-data-change`), since every label row
//! of the model would otherwise silently mean another class. Other changes of the image list
//! are said, and the interrupted epoch restarts from its beginning (its order was drawn for
//! the old list).

use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::state::{DataIdentity, TrainMeta};
use crate::data::Dataset;

/// FNV-1a, 64 bits: cheap, stable across platforms and releases, enough to tell lists apart.
pub(super) struct Fnv(u64);

impl Fnv {
    pub(super) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}

/// The identity of `dataset`, opened from `data_path`: paths are taken below `data_path`, so
/// moving the folder does not change it.
pub(super) fn identity(dataset: &Dataset, data_path: &str) -> DataIdentity {
    let mut h = Fnv::new();
    let root = Path::new(data_path);
    for i in 0..dataset.len() {
        match dataset.path(i) {
            Some(path) => h.write(path.strip_prefix(root).unwrap_or(path).to_string_lossy().as_bytes()),
            None => h.write(&(i as u64).to_le_bytes()),
        }
        h.write(&[0]);
        h.write(&dataset.label(i).unwrap_or(-1).to_le_bytes());
    }
    DataIdentity { images: dataset.len(), fingerprint: format!("{:016x}", h.0) }
}

/// How the data of a resumed run compares with the saved run's.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DataChange {
    /// Same classes, count and list (or a file from before identities were saved, whose
    /// classes match).
    Same,
    /// The same list of files and labels with its one class under another name (a moved or
    /// renamed folder): the interrupted epoch goes on where it stopped. The text says so.
    Renamed(String),
    /// The list changed: the epoch that was interrupted restarts at its beginning. The text
    /// says what changed, for the start line.
    Changed(String),
}

/// Compares the saved run (`saved`, read from `state`) with the current `classes` and `now`.
/// Other classes are an error naming both lists unless `allow` (then a change); one class
/// under another name (a renamed folder) over the same list is [`DataChange::Renamed`].
pub(super) fn compare(
    state: &Path,
    saved: &TrainMeta,
    classes: &[String],
    now: &DataIdentity,
    allow: bool,
) -> Result<DataChange> {
    let mut what = vec![];
    // One class on both sides is label 0 either way: a renamed or moved folder (whose name
    // names the one class) changes no label's meaning.
    let renamed_single = saved.classes.len() == 1 && classes.len() == 1;
    if saved.classes != classes {
        let (old, new) = (list(&saved.classes), list(classes));
        if renamed_single {
            what.push(format!("the one class is now named {new} (was {old})"));
        } else if !allow {
            bail!(
                "{} was trained on classes {old} but the data now has {new}: every label would change meaning; \
                 use the same data, another checkpoint path, or --allow-data-change to fine-tune on the new classes",
                state.display()
            );
        } else {
            what.push(format!("classes {old} → {new} (--allow-data-change)"));
        }
    }
    match &saved.data {
        Some(old) if old.images != now.images => {
            what.push(format!("{} images, was {}", now.images, old.images))
        }
        Some(old) if old.fingerprint != now.fingerprint => {
            what.push(format!("the image list changed ({} images, as before)", now.images))
        }
        _ => {}
    }
    let list_changed = what.len() > usize::from(renamed_single && saved.classes != classes);
    Ok(match (what.is_empty(), list_changed) {
        (true, _) => DataChange::Same,
        (false, false) => DataChange::Renamed(what.join("; ")),
        (false, true) => DataChange::Changed(what.join("; ")),
    })
}

/// "[a, b]" with at most eight names, then the count of the rest.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", … {} more", names.len() - SHOWN));
    }
    format!("{} [{text}]", names.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn meta(classes: &[&str], data: Option<DataIdentity>) -> TrainMeta {
        TrainMeta { data, ..TrainMeta::fresh(1, names(classes), Config::default()) }
    }

    fn id(images: usize, fingerprint: &str) -> DataIdentity {
        DataIdentity { images, fingerprint: fingerprint.into() }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn other_classes_are_an_error_naming_both_lists_unless_allowed() {
        let saved = meta(&["cat", "dog"], Some(id(10, "a")));
        let new = names(&["ant", "cat", "dog"]);
        let err = compare(Path::new("w.state"), &saved, &new, &id(12, "b"), false).unwrap_err().to_string();
        assert!(err.contains("2 [cat, dog]") && err.contains("3 [ant, cat, dog]"), "{err}");
        assert!(!err.contains('\n'));
        let allowed = compare(Path::new("w.state"), &saved, &new, &id(12, "b"), true).unwrap();
        assert_eq!(
            allowed,
            DataChange::Changed(
                "classes 2 [cat, dog] → 3 [ant, cat, dog] (--allow-data-change); 12 images, was 10".into()
            )
        );
    }

    #[test]
    fn a_changed_count_or_list_is_a_change_and_the_same_data_is_not() {
        let saved = meta(&["x"], Some(id(10, "a")));
        let x = names(&["x"]);
        assert_eq!(compare(Path::new("s"), &saved, &x, &id(10, "a"), false).unwrap(), DataChange::Same);
        let count = compare(Path::new("s"), &saved, &x, &id(11, "a"), false).unwrap();
        assert_eq!(count, DataChange::Changed("11 images, was 10".into()));
        let list = compare(Path::new("s"), &saved, &x, &id(10, "b"), false).unwrap();
        assert!(matches!(list, DataChange::Changed(t) if t.contains("image list changed")));
        // A file from before identities were saved: only the classes can be compared.
        assert_eq!(
            compare(Path::new("s"), &meta(&["x"], None), &x, &id(3, "c"), false).unwrap(),
            DataChange::Same
        );
    }

    #[test]
    fn a_renamed_single_class_folder_is_a_change_not_an_error() {
        let saved = meta(&["pandas"], Some(id(10, "a")));
        let change = compare(Path::new("s"), &saved, &names(&["moved"]), &id(10, "a"), false).unwrap();
        assert!(matches!(change, DataChange::Renamed(t) if t.contains("now named 1 [moved]")));
        // Renamed and another list: a change of the list.
        let both = compare(Path::new("s"), &saved, &names(&["moved"]), &id(11, "a"), false).unwrap();
        assert!(matches!(both, DataChange::Changed(t) if t.contains("now named") && t.contains("11 images")));
    }

    #[test]
    fn long_class_lists_are_cut_after_eight_names() {
        let many: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let text = list(&many);
        assert!(text.starts_with("20 [c0, c1") && text.ends_with("c7, … 12 more]"), "{text}");
    }

    #[test]
    fn the_fingerprint_follows_the_file_list_not_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, files) in [("a", &["1.png", "2.png"][..]), ("b", &["1.png", "3.png"][..])] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            for f in files {
                image::RgbImage::new(2, 2).save(dir.path().join(folder).join(f)).unwrap();
            }
        }
        let open = |f: &str| {
            let path = dir.path().join(f).display().to_string();
            identity(&Dataset::open(&path, 2).unwrap(), &path)
        };
        let (a, b) = (open("a"), open("b"));
        assert_eq!((a.images, b.images), (2, 2));
        assert_ne!(a.fingerprint, b.fingerprint);
        std::fs::rename(dir.path().join("a"), dir.path().join("moved")).unwrap();
        assert_eq!(open("moved"), a);
    }
}
