//! A folder that cannot be read is named in one warning and the scan goes on. Its own test
//! binary: run as root (as CI is), the test drops its effective user id to `nobody` while it
//! scans, which would change what any other test running in the same process may read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dit::config::ClassLayout;
use dit::data::Dataset;
use image::{Rgb, RgbImage};

/// Opens `root` as `layout`, with the effective user id of `nobody` when running as root (for
/// whom no permission bit is ever missing).
fn open_as_nobody(root: &Path, layout: ClassLayout) -> anyhow::Result<Dataset> {
    const NOBODY: libc::uid_t = 65534;
    // SAFETY: plain system calls; only this test runs in this process.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        assert_eq!(unsafe { libc::seteuid(NOBODY) }, 0, "seteuid: {}", std::io::Error::last_os_error());
    }
    let opened = Dataset::open_as(root.to_str().unwrap(), 4, layout);
    if as_root {
        assert_eq!(unsafe { libc::seteuid(0) }, 0, "seteuid back: {}", std::io::Error::last_os_error());
    }
    opened
}

#[test]
fn unreadable_folders_are_named_in_one_warning_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for folder in ["open", "open/locked_inner", "locked"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        RgbImage::from_pixel(4, 4, Rgb([1, 2, 3])).save(root.join(folder).join("x.png")).unwrap();
    }
    let mode = |path: &Path, bits: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap()
    };
    mode(root, 0o755);
    mode(&root.join("open/locked_inner"), 0o000);
    mode(&root.join("locked"), 0o000);
    let none = open_as_nobody(root, ClassLayout::None);
    let folders = open_as_nobody(root, ClassLayout::Folders);
    mode(&root.join("open/locked_inner"), 0o755);
    mode(&root.join("locked"), 0o755);

    for (layout, opened) in [("none", none), ("folders", folders)] {
        let data = opened.unwrap_or_else(|e| panic!("{layout}: {e:#}"));
        assert_eq!(data.len(), 1, "{layout}: only open/x.png can be read");
        assert!(data.path(0).unwrap().ends_with("open/x.png"));
        let warnings = data.scan_warnings();
        assert_eq!(warnings.len(), 2, "{layout}: {warnings:?}");
        for (warning, folder) in warnings.iter().zip(["locked", "locked_inner"]) {
            assert!(warning.starts_with("warning: cannot read folder "), "{warning}");
            assert!(warning.contains(folder) && !warning.contains('\n'), "{warning}");
        }
    }
}
