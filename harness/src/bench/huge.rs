//! Anonymous memory on 2 MiB pages, as a mapped model gets them (see `page_cache.rs`).
//!
//! The bench's own buffers (the bandwidth benchmark's, the GEMV matrices both engines read)
//! live here so that they sit in memory the way the engines' weights do. With 4 KiB pages a
//! stream is measured ~30 % slower here, which would understate the bandwidth limit; and a
//! GEMV matrix in cache ran at one of two speeds from one process to the next (2560×2560:
//! 41 or 55–60 µs, the placement of its 4 KiB pages), where on 2 MiB pages it runs at the
//! faster one every time.

/// The start of the usable bytes is aligned to this: the kernel backs only whole, aligned
/// 2 MiB extents of a mapping with huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// `len` zeroed bytes starting on a 2 MiB boundary, from an anonymous map that asked for huge
/// pages (Linux; advice only); a plain `Vec` where mapping fails.
pub enum HugeBuffer {
    Mapped { map: memmap2::MmapMut, start: usize, len: usize },
    Heap(Vec<u8>),
}

impl HugeBuffer {
    pub fn zeroed(len: usize) -> HugeBuffer {
        if len == 0 {
            return HugeBuffer::Heap(Vec::new());
        }
        let Some(padded) = len.checked_add(HUGE_PAGE) else {
            return HugeBuffer::Heap(vec![0; len]);
        };
        match memmap2::MmapMut::map_anon(padded) {
            Ok(map) => {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
                HugeBuffer::Mapped { map, start, len }
            }
            Err(_) => HugeBuffer::Heap(vec![0; len]),
        }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> HugeBuffer {
        let mut b = HugeBuffer::zeroed(bytes.len());
        b.bytes_mut().copy_from_slice(bytes);
        b
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            HugeBuffer::Mapped { map, start, len } => &map[*start..*start + *len],
            HugeBuffer::Heap(v) => v,
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            HugeBuffer::Mapped { map, start, len } => &mut map[*start..*start + *len],
            HugeBuffer::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_bytes_aligned() {
        let b = HugeBuffer::copy_of(&[7, 8, 9]);
        assert_eq!(b.bytes(), &[7, 8, 9]);
        if let HugeBuffer::Mapped { .. } = b {
            assert_eq!(b.bytes().as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert!(HugeBuffer::zeroed(0).bytes().is_empty());
        assert!(HugeBuffer::zeroed(5 << 20).bytes().iter().all(|&x| x == 0));
    }
}
