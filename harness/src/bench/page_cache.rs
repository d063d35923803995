//! How the model file sits in the page cache, which decides the page size both engines map it
//! with — and with it the lm_head's streaming speed, the largest item of every decode step.
//!
//! Linux maps a file with 2 MiB pages (`FilePmdMapped` in smaps) when its page cache holds
//! 2 MiB folios, which happens when the file is read from disk through a map that asked for
//! huge pages (`MADV_HUGEPAGE`, as the Rust engine's map does). A file that entered the
//! cache another way (written by the generator, read with `read`) sits in small folios and is
//! mapped with 4 KiB pages by everyone: measured here, the lm_head then streams at ~18 GB/s
//! instead of ~25 GB/s. `--page-cache huge` therefore drops the file from the cache and reads
//! it back through such a map before the engines start, so both engines see the same, best
//! layout; each worker reports what it actually got ([`model_mapping`]).

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use bitnet_engine::gguf::GgufFile;

/// What `--page-cache` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PageCache {
    /// Drop the model from the page cache and read it back through a 2 MiB-page map.
    Huge,
    /// Leave the page cache as it is.
    Keep,
}

impl PageCache {
    pub fn name(self) -> &'static str {
        match self {
            PageCache::Huge => "huge",
            PageCache::Keep => "keep",
        }
    }
}

/// Drops `path` from the page cache and reads it back through the engine's own map (which
/// asks for 2 MiB pages). Returns the seconds taken. Only clean pages can be dropped, so the
/// file is synced first; pages another process has mapped stay where they are.
pub fn refill_with_huge_pages(path: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
        .with_context(|| format!("cannot drop {} from the page cache", path.display()))?;
    drop(file);
    let model = GgufFile::open(path).with_context(|| format!("cannot map {}", path.display()))?;
    // Readahead fills whole 2 MiB folios as the pages fault in.
    fault_in(&model);
    Ok(start.elapsed().as_secs_f64())
}

/// Reads one byte per 4 KiB page of the model's map, so every page is faulted in.
fn fault_in(model: &GgufFile) {
    let sum = model.as_bytes().iter().step_by(4096).fold(0u8, |a, &b| a.wrapping_add(b));
    std::hint::black_box(sum);
}

/// Resident bytes of the mappings of `path` in this process, and how many of them are mapped
/// with 2 MiB pages, from `/proc/self/smaps` (zeros where it cannot be read).
pub fn model_mapping(path: &Path) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mapping_of(&smaps, &path.to_string_lossy())
}

/// Sums `Rss` and `FilePmdMapped` (kB) over the smaps entries whose pathname is `path`.
fn mapping_of(smaps: &str, path: &str) -> (u64, u64) {
    let (mut rss, mut pmd) = (0u64, 0u64);
    let mut inside = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if !first.ends_with(':') {
            // A mapping header: `start-end perms offset dev inode [pathname]`.
            inside = line.trim_end().ends_with(&format!(" {path}"));
            continue;
        }
        if !inside {
            continue;
        }
        let kb = || fields.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match first {
            "Rss:" => rss += kb(),
            "FilePmdMapped:" => pmd += kb(),
            _ => {}
        }
    }
    (rss, pmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000400000 r--s 00000000 fd:01 1234 /models/m.gguf
Size:               4096 kB
Rss:                4096 kB
FilePmdMapped:      2048 kB
VmFlags: rd mr me ms
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
Rss:                   4 kB
FilePmdMapped:         0 kB
7f0000500000-7f0000600000 r--s 00400000 fd:01 1234 /models/m.gguf
Rss:                1024 kB
FilePmdMapped:         0 kB
";

    #[test]
    fn mappings_of_the_model_are_summed() {
        assert_eq!(mapping_of(SMAPS, "/models/m.gguf"), (5120 * 1024, 2048 * 1024));
        assert_eq!(mapping_of(SMAPS, "/models/other.gguf"), (0, 0));
    }

    #[test]
    fn refilling_keeps_the_file_and_maps_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = &bitnet_fixtures::spec::committed()[0];
        let path = bitnet_fixtures::write_spec(spec, bitnet_fixtures::WeightForm::I2S, dir.path()).unwrap();
        let before = std::fs::read(&path).unwrap();
        refill_with_huge_pages(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let model = GgufFile::open(&path).unwrap();
        fault_in(&model);
        let (rss, pmd) = model_mapping(&path);
        assert!(rss > 0 && pmd <= rss, "{rss} {pmd}");
    }
}
