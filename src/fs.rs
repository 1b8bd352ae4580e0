//! Writing whole files so that a crash never leaves half of one and two writers never meet:
//! [`write_atomic`]. Each write goes to a temporary name of its own ([`temp_name`]: the
//! machine, the process and a random part) in the target's folder, is fsynced and renamed over
//! the target, so a reader sees the old file or the new one, never a mix, and another process
//! writing the same target (a second run, another machine on a shared folder) never touches
//! this one's bytes. A failed write removes its temporary file and says, in one line, what the
//! target needed ([`explain`]).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Every temporary name starts with this.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Runs `write` on a temporary path of this process beside `path`, fsyncs the result and
/// renames it over `path`. `size_hint` (bytes, 0 when unknown) is what the error of a failed
/// write quotes as needed. Leftovers of this machine's dead writers beside `path` are removed
/// first ([`clean_dead_leftovers`]); nobody else's temporary files are touched.
pub fn write_atomic(path: &Path, size_hint: u64, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent(path);
    std::fs::create_dir_all(&dir).map_err(|e| explain(path, e.into(), size_hint))?;
    let file_name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    clean_dead_leftovers(&dir);
    let tmp = dir.join(temp_name(&file_name.to_string_lossy()));
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()?;
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(explain(path, e, size_hint));
    }
    Ok(())
}

/// The folder of `path` ("." for a bare file name).
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.tmp-<machine>-<pid>-<random>-<name>`: unique to this write, with `name` (and so its
/// extension, from which some writers pick their format) last.
pub fn temp_name(name: &str) -> String {
    format!("{}{:016x}-{name}", own_prefix(), random())
}

/// `.tmp-<machine>-<pid>-`: the start of every temporary name this process makes.
fn own_prefix() -> String {
    format!("{TEMP_PREFIX}{}-{}-", machine(), std::process::id())
}

/// A random 64-bit number, different at every call (std's per-process random hash keys over a
/// counter).
pub fn random() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// This machine's tag in temporary names: 8 hex digits of a hash of its host name (stable
/// across processes, unlike [`random`]), so that a process id is only ever compared with the
/// processes of the machine that wrote it.
fn machine() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        // FNV-1a: the same on every run, whatever std's hasher does.
        let mut h: u32 = 0x811c_9dc5;
        for b in host.trim().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        format!("{h:08x}")
    })
}

/// Removes the temporary files and folders in `dir` left by writers of this machine that no
/// longer run (killed mid-write: they can never rename them). Those of running processes and
/// of other machines are left alone; failures are ignored (someone else may be cleaning too).
pub fn clean_dead_leftovers(dir: &Path) {
    let mine = format!("{TEMP_PREFIX}{}-", machine());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&mine).and_then(|r| r.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        if pid > 0 && !alive(pid) {
            let path = entry.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
    }
}

/// Whether a process `pid` exists on this machine (one that exists but is not ours counts).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Bytes free to this user on the file system holding `dir`, if it can be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// The error of a failed write of `path`: "cannot write <path>", what the target needs when
/// the cause is the place (space, permission, a read-only file system), then the cause (kept
/// as the error's source, so callers can still tell what it was).
pub fn explain(path: &Path, err: anyhow::Error, size_hint: u64) -> anyhow::Error {
    let dir = parent(path);
    let io = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
    let free = free_bytes(&dir);
    let full = io == Some(ErrorKind::StorageFull) || free.is_some_and(|f| size_hint > 0 && f < size_hint);
    let needs = match io {
        _ if full => format!(
            " (it needs about {}{})",
            crate::data::human_bytes(size_hint.max(1)),
            free.map_or(String::new(), |f| format!(" and {} is free there", crate::data::human_bytes(f)))
        ),
        Some(ErrorKind::PermissionDenied) => format!(" (it needs write permission on {})", dir.display()),
        Some(ErrorKind::ReadOnlyFilesystem) => format!(" ({} is on a read-only file system)", dir.display()),
        _ => String::new(),
    };
    err.context(format!("cannot write {}{needs}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_differ_per_write_and_keep_the_extension_last() {
        let (a, b) = (temp_name("w.ot"), temp_name("w.ot"));
        assert_ne!(a, b);
        assert!(a.starts_with(&own_prefix()) && a.ends_with("-w.ot"), "{a}");
    }

    #[test]
    fn only_dead_writers_leftovers_of_this_machine_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A pid that cannot be running: above the kernel's maximum.
        let dead = format!("{TEMP_PREFIX}{}-{}-00-w.ot", machine(), i32::MAX - 1);
        let live = temp_name("w.ot");
        let other_machine = format!("{TEMP_PREFIX}00000000-{}-00-w.ot", i32::MAX - 1);
        let old_style = format!("{TEMP_PREFIX}w.ot");
        for name in [&dead, &live, &other_machine, &old_style] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::create_dir(d.join(format!("{dead}.d"))).unwrap();
        clean_dead_leftovers(d);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![live, other_machine, old_style];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_names_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("w.bin");
        std::fs::write(&target, b"old").unwrap();
        let err = write_atomic(&target, 10, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("disk went away")
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with(&format!("cannot write {}: disk went away", target.display())), "{text}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file was removed");
    }
}
