//! The machine: CPU, caches, memory, load, and its streaming-read bandwidth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bitnet_engine::quant::Qk256Kernel;

use super::huge::HugeBuffer;
use super::report::{Bandwidth, Machine};

/// The CPU flags the bench reports, in /proc/cpuinfo's spelling: what the QK256 and float
/// kernels use or could use (AVX2/FMA/F16C; AVX-512 and its VNNI and BF16 parts; the 256-bit
/// AVX-VNNI of Intel client CPUs; AMX).
pub const RELEVANT_FLAGS: [&str; 22] = [
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512cd",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "avx_vnni_int8",
    "avx_ne_convert",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// The relevant flags of the first `flags` line of /proc/cpuinfo (`None`: no such line).
pub fn cpuinfo_flags(cpuinfo: &str) -> Option<Vec<String>> {
    let line = cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "flags").then_some(value)
    })?;
    let present: Vec<&str> = line.split_whitespace().collect();
    Some(RELEVANT_FLAGS.iter().filter(|f| present.contains(*f)).map(|f| f.to_string()).collect())
}

/// The relevant flags as this process detects them at run time (where /proc/cpuinfo is
/// missing); the flags the standard library cannot detect on stable Rust are left out.
fn detected_flags() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let detected = [
            ("sse4_2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            ("avx512dq", std::arch::is_x86_feature_detected!("avx512dq")),
            ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
            ("avx512cd", std::arch::is_x86_feature_detected!("avx512cd")),
            ("avx512vbmi", std::arch::is_x86_feature_detected!("avx512vbmi")),
            ("avx512_vbmi2", std::arch::is_x86_feature_detected!("avx512vbmi2")),
            ("avx512_vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
            ("avx512_bf16", std::arch::is_x86_feature_detected!("avx512bf16")),
            ("avx512_fp16", std::arch::is_x86_feature_detected!("avx512fp16")),
            ("avx_vnni", std::arch::is_x86_feature_detected!("avxvnni")),
        ];
        detected.iter().filter(|(_, on)| *on).map(|(name, _)| name.to_string()).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// What /proc and /sys say about this machine (fields it cannot read are left empty).
pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_total_bytes = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let (cpu_flags, cpu_flags_source) = match cpuinfo_flags(&cpuinfo) {
        Some(flags) => (flags, "proc_cpuinfo"),
        None => {
            let detected = detected_flags();
            let source = if detected.is_empty() { "none" } else { "cpuid" };
            (detected, source)
        }
    };
    Machine {
        cpu_model,
        cpu_flags,
        cpu_flags_source: cpu_flags_source.into(),
        qk256_kernels: Qk256Kernel::available().into_iter().map(|k| k.name().to_string()).collect(),
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        caches: caches(),
        memory_total_bytes,
        load_average_start: load_average(),
        load_average_end: None,
    }
}

/// `L1d 64K`, `L2 2048K`, ... for cpu0 (sizes per instance, as /sys gives them).
fn caches() -> Vec<String> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = base.join(format!("index{i}"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string()).ok();
        let (Some(level), Some(ty), Some(size)) = (read("level"), read("type"), read("size")) else { break };
        let ty = match ty.as_str() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        out.push(format!("L{level}{ty} {size}"));
    }
    out
}

/// /proc/loadavg's three averages.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Sums little-endian u64 words with 8 independent accumulators: the compiler vectorises it,
/// so one core issues loads as fast as memory delivers them.
fn sum(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let blocks = bytes.chunks_exact(64);
    let rest = blocks.remainder();
    for b in blocks {
        for (a, w) in acc.iter_mut().zip(b.chunks_exact(8)) {
            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    // The tail: whole words, then the last bytes as a zero-padded word.
    let mut tail = rest.chunks(8).map(|w| {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        u64::from_le_bytes(b)
    });
    acc.iter().copied().chain(&mut tail).fold(0u64, u64::wrapping_add)
}

/// Streaming-read bandwidth: a buffer of `bytes` (much larger than the caches) summed by each
/// thread count's threads, each over its own contiguous part; best of `passes` passes.
pub fn bandwidth(bytes: u64, threads: &[usize], passes: usize) -> Vec<Bandwidth> {
    let len = (bytes.max(64) / 64 * 64) as usize;
    let mut buf = HugeBuffer::zeroed(len);
    // Written once, so every page is resident before timing (a fresh page would be a zero page).
    for (i, w) in buf.bytes_mut().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_le_bytes());
    }
    let buf = buf.bytes();
    let sink = AtomicU64::new(0);
    threads
        .iter()
        .map(|&t| {
            let t = t.max(1);
            let part = len.div_ceil(t).next_multiple_of(64);
            let mut best = f64::INFINITY;
            for _ in 0..passes.max(1) {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for chunk in buf.chunks(part) {
                        let sink = &sink;
                        s.spawn(move || sink.fetch_add(sum(chunk), Ordering::Relaxed));
                    }
                });
                best = best.min(start.elapsed().as_secs_f64());
            }
            Bandwidth { threads: t, gb_per_s: len as f64 / best / 1e9, passes: passes.max(1) }
        })
        .collect()
}

/// Per thread count, the better of two measurements (passes added up).
pub fn best_of(a: &[Bandwidth], b: &[Bandwidth]) -> Vec<Bandwidth> {
    a.iter()
        .map(|x| match b.iter().find(|y| y.threads == x.threads) {
            Some(y) => Bandwidth {
                threads: x.threads,
                gb_per_s: x.gb_per_s.max(y.gb_per_s),
                passes: x.passes + y.passes,
            },
            None => x.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_wraps_and_counts_every_word() {
        let bytes = |ws: &[u64]| ws.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let xs: Vec<u64> = (1..=21).collect();
        assert_eq!(sum(&bytes(&xs)), 231);
        assert_eq!(sum(&bytes(&[u64::MAX, 2])), 1);
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[1, 1]), 257);
    }

    #[test]
    fn bandwidth_reports_each_thread_count() {
        let b = bandwidth(1 << 20, &[1, 2], 1);
        assert_eq!(b.iter().map(|b| b.threads).collect::<Vec<_>>(), vec![1, 2]);
        assert!(b.iter().all(|b| b.gb_per_s.is_finite() && b.gb_per_s > 0.0));
    }

    #[test]
    fn best_of_two_measurements() {
        let bw = |threads, gb_per_s| Bandwidth { threads, gb_per_s, passes: 3 };
        let best = best_of(&[bw(1, 20.0), bw(2, 30.0)], &[bw(2, 31.0), bw(1, 19.0)]);
        assert_eq!(
            best,
            vec![Bandwidth { passes: 6, ..bw(1, 20.0) }, Bandwidth { passes: 6, ..bw(2, 31.0) }]
        );
    }

    #[test]
    fn cpuinfo_flags_keeps_the_relevant_ones_in_order() {
        let info = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_vnni sse avx2 fma amx_int8 avx\n\
                    processor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(cpuinfo_flags(info).unwrap(), ["avx", "avx2", "fma", "avx512_vnni", "amx_int8"]);
        assert_eq!(cpuinfo_flags("processor\t: 0\n"), None);
        assert_eq!(cpuinfo_flags("flags\t: fpu sse\n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn machine_description_reads_proc() {
        let m = describe();
        assert!(m.logical_cpus >= 1);
        assert_eq!(m.qk256_kernels.first().map(String::as_str), Some("scalar"));
        if std::path::Path::new("/proc/cpuinfo").exists() {
            assert_eq!(m.cpu_flags_source, "proc_cpuinfo");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(m.cpu_flags.iter().any(|f| f == "avx2"), "{:?}", m.cpu_flags);
        }
        if std::path::Path::new("/proc/loadavg").exists() {
            assert!(m.load_average_start.is_some());
        }
    }
}
