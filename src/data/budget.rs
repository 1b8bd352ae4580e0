//! What `train.cache_images` comes to on this machine: the bytes of decoded images a
//! [`super::Loader`] may keep. `auto` takes half of the memory available when training starts
//! (the kernel's `MemAvailable`, or less when a cgroup limit leaves less), so that whatever
//! the cache holds, the other half stays free for the model, the step and everything else.
//! Data-parallel processes on one machine (torchrun's `LOCAL_WORLD_SIZE`) split every budget
//! evenly, so together they stay within it.

use std::fs;

use crate::config::CacheImages;

/// A cache limit that holds every image.
pub const CACHE_ALL: u64 = u64::MAX;
/// A cache limit that holds nothing.
pub const CACHE_OFF: u64 = 0;
/// The share of the available memory that `auto` gives the cache: 1 / `AUTO_DIVISOR`.
const AUTO_DIVISOR: u64 = 2;

/// A resolved budget: the limit and how it was arrived at, for the start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBudget {
    /// Bytes this process's cache may hold ([`CACHE_ALL`]: no limit).
    pub bytes: u64,
    /// e.g. "auto: half of the 21.3 GiB available".
    pub origin: String,
}

/// The budget of one of `local_ranks` processes sharing this machine under `setting`.
pub fn cache_budget(setting: CacheImages, local_ranks: usize) -> CacheBudget {
    let available = match setting {
        CacheImages::Auto => available_memory(),
        _ => None,
    };
    budget_from(setting, local_ranks, available)
}

/// [`cache_budget`] with `available` bytes of memory (`None`: unknown).
fn budget_from(setting: CacheImages, local_ranks: usize, available: Option<u64>) -> CacheBudget {
    let ranks = local_ranks.max(1) as u64;
    let shared = |origin: String| match ranks {
        1 => origin,
        n => format!("{origin}, split between {n} processes on this machine"),
    };
    match setting {
        CacheImages::All => CacheBudget { bytes: CACHE_ALL, origin: "all".into() },
        CacheImages::Off => CacheBudget { bytes: CACHE_OFF, origin: "off".into() },
        CacheImages::Bytes(bytes) => {
            CacheBudget { bytes: bytes / ranks, origin: shared(setting.to_string()) }
        }
        CacheImages::Auto => match available {
            Some(available) => CacheBudget {
                bytes: available / AUTO_DIVISOR / ranks,
                origin: shared(format!("auto: half of the {} available", human_bytes(available))),
            },
            None => CacheBudget { bytes: CACHE_OFF, origin: "auto: the available memory is unknown".into() },
        },
    }
}

/// The memory this process can still take: `MemAvailable`, capped by what a cgroup (v2 or v1)
/// limit leaves; `None` where `/proc/meminfo` cannot be read.
pub fn available_memory() -> Option<u64> {
    let system = mem_available(&fs::read_to_string("/proc/meminfo").ok()?)?;
    let read = |path: &str| fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let cgroup_room = |limit: &str, usage: &str| Some(read(limit)?.saturating_sub(read(usage)?));
    let room = [
        cgroup_room("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        cgroup_room(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ];
    Some(room.into_iter().flatten().fold(system, u64::min))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes with a binary unit and one decimal, e.g. "57.0 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(text), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn budgets_are_split_between_local_processes() {
        assert_eq!(cache_budget(CacheImages::Bytes(64 << 20), 1).bytes, 64 << 20);
        let two = cache_budget(CacheImages::Bytes(64 << 20), 2);
        assert_eq!(two.bytes, 32 << 20);
        assert!(two.origin.contains("64MiB") && two.origin.contains("2 processes"), "{}", two.origin);
        assert_eq!(cache_budget(CacheImages::Off, 4).bytes, CACHE_OFF);
        assert_eq!(cache_budget(CacheImages::All, 4).bytes, CACHE_ALL);
        let auto = budget_from(CacheImages::Auto, 2, Some(8 << 30));
        assert_eq!(auto.bytes, 2 << 30);
        assert_eq!(
            auto.origin,
            "auto: half of the 8.0 GiB available, split between 2 processes on this machine"
        );
        assert_eq!(budget_from(CacheImages::Auto, 1, None).bytes, CACHE_OFF);
        assert!(available_memory().is_some_and(|bytes| bytes > 0), "Linux has /proc/meminfo");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(57 << 20), "57.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
