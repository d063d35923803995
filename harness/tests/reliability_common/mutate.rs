//! Deterministic corruptions of a valid GGUF file: bit flips, truncations, counts and lengths
//! set to huge values, offsets moved, types swapped, hyper-parameters and data poisoned.
//!
//! Every case is a pure function of (file, seed), so a failing case can be replayed from the
//! seed printed with it.

use super::gguf_map::{FieldKind, GgufMap};

/// The fixtures' SplitMix64 generator: fixed forever, so a case number always means the same corruption.
pub use bitnet_fixtures::rng::Rng;

/// The kinds of corruption, one per case (a `Combo` applies several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    BitFlips,
    Truncate,
    HugeCountOrLength,
    FieldValue,
    OffsetMoved,
    TypeSwapped,
    HyperParameter,
    PoisonedData,
    Splice,
    Combo,
}

pub const KINDS: [Kind; 10] = [
    Kind::BitFlips,
    Kind::Truncate,
    Kind::HugeCountOrLength,
    Kind::FieldValue,
    Kind::OffsetMoved,
    Kind::TypeSwapped,
    Kind::HyperParameter,
    Kind::PoisonedData,
    Kind::Splice,
    Kind::Combo,
];

fn write_field(b: &mut [u8], at: usize, size: usize, v: u64) {
    if at + size <= b.len() {
        b[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
    }
}

fn read_field(b: &[u8], at: usize, size: usize) -> u64 {
    let mut v = [0u8; 8];
    if at + size <= b.len() {
        v[..size].copy_from_slice(&b[at..at + size]);
    }
    u64::from_le_bytes(v)
}

/// A value that stresses a count, length or size field of a file of `len` bytes.
fn nasty_value(rng: &mut Rng, orig: u64, len: u64) -> u64 {
    match rng.below(16) {
        0 => u64::MAX,
        1 => u64::MAX - rng.below(64) as u64,
        2 => 1 << 63,
        3 => (1 << 63) - 1,
        4 => 1 << 32,
        5 => u64::from(u32::MAX),
        6 => len,
        7 => len + 1,
        8 => len / 2,
        9 => 0,
        10 => orig.wrapping_add(1),
        11 => orig.wrapping_sub(1),
        12 => orig.wrapping_mul(2),
        13 => orig.wrapping_add(1 + rng.below(1 << 16) as u64),
        // The largest counts the reader's "fits in what remains" bound lets through.
        14 => len / *rng.pick(&[1, 4, 8, 12, 13, 24]),
        _ => rng.next_u64(),
    }
}

/// A type id to put in a value-type or tensor-type field: valid ones, removed ones, absurd ones.
fn type_id(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 | 1 => rng.below(41) as u64,
        2 => *rng.pick(&[4, 5, 13, 40, 41, 99, 1000]),
        _ => *rng.pick(&[u64::from(u32::MAX), u64::from(u32::MAX) - 1, 1 << 31]),
    }
}

fn fields_of(map: &GgufMap, kinds: &[FieldKind]) -> Vec<(usize, usize)> {
    map.fields.iter().filter(|f| kinds.contains(&f.kind)).map(|f| (f.at, f.size)).collect()
}

/// A field of one of `kinds`, the kind chosen first: the few counts and types get as much
/// attention as the thousand string lengths of a vocabulary.
fn pick_field(rng: &mut Rng, map: &GgufMap, kinds: &[FieldKind]) -> (usize, usize) {
    let present: Vec<FieldKind> =
        kinds.iter().copied().filter(|k| map.fields.iter().any(|f| f.kind == *k)).collect();
    let kind = *rng.pick(&present);
    *rng.pick(&fields_of(map, &[kind]))
}

const ALL_FIELD_KINDS: [FieldKind; 12] = [
    FieldKind::Version,
    FieldKind::TensorCount,
    FieldKind::KvCount,
    FieldKind::StringLen,
    FieldKind::ValueType,
    FieldKind::ArrayType,
    FieldKind::ArrayCount,
    FieldKind::Scalar,
    FieldKind::NDims,
    FieldKind::Dim,
    FieldKind::TensorType,
    FieldKind::TensorOffset,
];

/// A position: mostly in the header (where structure lives), sometimes anywhere.
fn position(rng: &mut Rng, map: &GgufMap, len: usize) -> usize {
    if rng.chance(75) {
        rng.below(map.header_end.min(len).max(1))
    } else {
        rng.below(len.max(1))
    }
}

/// Applies one corruption of `kind` to `b`.
pub fn apply(kind: Kind, b: &mut Vec<u8>, map: &GgufMap, rng: &mut Rng) {
    match kind {
        Kind::BitFlips => bit_flips(b, map, rng),
        Kind::Truncate => truncate(b, map, rng),
        Kind::HugeCountOrLength => huge_count_or_length(b, map, rng),
        Kind::FieldValue => field_value(b, map, rng),
        Kind::OffsetMoved => offset_moved(b, map, rng),
        Kind::TypeSwapped => type_swapped(b, map, rng),
        Kind::HyperParameter => hyper_parameter(b, map, rng),
        Kind::PoisonedData => poisoned_data(b, map, rng),
        Kind::Splice => splice(b, map, rng),
        Kind::Combo => {
            for _ in 0..2 + rng.below(3) {
                let k = *rng.pick(&KINDS[..KINDS.len() - 1]);
                apply(k, b, map, rng);
            }
        }
    }
}

/// Flips 1 to 16 bits, mostly in the header.
fn bit_flips(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    for _ in 0..1 + rng.below(16) {
        let at = position(rng, map, b.len());
        if let Some(x) = b.get_mut(at) {
            *x ^= 1 << rng.below(8);
        }
    }
}

/// Cuts the file short: inside the first bytes, around the header, or anywhere.
fn truncate(b: &mut Vec<u8>, map: &GgufMap, rng: &mut Rng) {
    let cut = match rng.below(4) {
        0 => rng.below(64),
        1 | 2 => rng.below(map.header_end + 64),
        _ => rng.below(b.len()),
    };
    b.truncate(cut);
}

/// A count, length or dimension set to a nasty value.
fn huge_count_or_length(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    let len = b.len() as u64;
    let (at, size) = pick_field(
        rng,
        map,
        &[
            FieldKind::TensorCount,
            FieldKind::KvCount,
            FieldKind::StringLen,
            FieldKind::ArrayCount,
            FieldKind::NDims,
            FieldKind::Dim,
        ],
    );
    let v = nasty_value(rng, read_field(b, at, size), len);
    write_field(b, at, size, v);
}

/// Any header field set to a nasty value.
fn field_value(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    let len = b.len() as u64;
    let (at, size) = pick_field(rng, map, &ALL_FIELD_KINDS);
    let v = nasty_value(rng, read_field(b, at, size), len);
    write_field(b, at, size, v);
}

/// A tensor's data offset moved: onto another tensor, by a little, to the end, or swapped.
fn offset_moved(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    let len = b.len() as u64;
    let fs = fields_of(map, &[FieldKind::TensorOffset]);
    let &(at, _) = rng.pick(&fs);
    let orig = read_field(b, at, 8);
    let v = match rng.below(7) {
        0 => read_field(b, rng.pick(&fs).0, 8),
        1 => orig.wrapping_add(32),
        2 => orig.wrapping_sub(32),
        3 => orig.wrapping_add(1 + rng.below(31) as u64),
        4 => len,
        5 => {
            // Swap with another tensor's offset.
            let other = rng.pick(&fs).0;
            let o = read_field(b, other, 8);
            write_field(b, other, 8, orig);
            o
        }
        _ => nasty_value(rng, orig, len),
    };
    write_field(b, at, 8, v);
}

/// Two tensors' ggml types swapped, or a type id replaced.
fn type_swapped(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    if rng.chance(30) {
        // Swap two tensors' ggml types (sizes then disagree with the offsets).
        let fs = fields_of(map, &[FieldKind::TensorType]);
        let (a, c) = (rng.pick(&fs).0, rng.pick(&fs).0);
        let (x, y) = (read_field(b, a, 4), read_field(b, c, 4));
        write_field(b, a, 4, y);
        write_field(b, c, 4, x);
    } else {
        let (at, size) =
            pick_field(rng, map, &[FieldKind::ValueType, FieldKind::ArrayType, FieldKind::TensorType]);
        let v = type_id(rng);
        write_field(b, at, size, v);
    }
}

/// Scalar metadata values: small, zero, odd and huge numbers, NaN and Inf floats.
fn hyper_parameter(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    let len = b.len() as u64;
    let fs = fields_of(map, &[FieldKind::Scalar]);
    let &(at, size) = rng.pick(&fs);
    let v = match (size, rng.below(6)) {
        (4, 0) => u64::from(f32::NAN.to_bits()),
        (4, 1) => u64::from(f32::INFINITY.to_bits()),
        (4, 2) => u64::from((-1.0f32).to_bits()),
        (8, 0) => f64::NAN.to_bits(),
        (_, 3) => rng.below(8) as u64,
        (_, 4) => read_field(b, at, size) / 2 + rng.below(3) as u64,
        _ => nasty_value(rng, read_field(b, at, size), len),
    };
    write_field(b, at, size, v);
}

/// Tensor data poisoned: I2_S scales and codes, f32/f16 values made non-finite or huge.
fn poisoned_data(b: &mut [u8], map: &GgufMap, rng: &mut Rng) {
    let t = rng.pick(&map.tensors).clone();
    if t.range.end > b.len() {
        return;
    }
    match t.type_id {
        36 => {
            let scale_at = t.range.start + (t.n_elements / 4) as usize;
            match rng.below(5) {
                0 => b[scale_at..scale_at + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
                1 => b[scale_at..scale_at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes()),
                2 => b[scale_at..scale_at + 4].copy_from_slice(&0f32.to_le_bytes()),
                3 => b[scale_at..scale_at + 4].copy_from_slice(&(-0.5f32).to_le_bytes()),
                _ => {
                    // Invalid codes (3) over a stretch of the packed weights.
                    let start = t.range.start + rng.below(scale_at - t.range.start);
                    let end = (start + 1 + rng.below(256)).min(scale_at);
                    b[start..end].fill(0xff);
                }
            }
        }
        0 | 1 => {
            let width = if t.type_id == 0 { 4 } else { 2 };
            let n = (t.range.len() / width).max(1);
            let at = t.range.start + rng.below(n) * width;
            let bits: u32 = match (width, rng.below(3)) {
                (4, 0) => f32::NAN.to_bits(),
                (4, 1) => f32::NEG_INFINITY.to_bits(),
                (4, _) => 3.0e38f32.to_bits(),
                (_, 0) => 0x7e00, // f16 NaN
                (_, 1) => 0x7c00, // f16 +Inf
                _ => 0x7bff,      // f16 max
            };
            b[at..at + width].copy_from_slice(&bits.to_le_bytes()[..width]);
        }
        _ => {}
    }
}

/// Copy, insert or delete a stretch of header bytes: shifts everything after it.
fn splice(b: &mut Vec<u8>, map: &GgufMap, rng: &mut Rng) {
    let at = position(rng, map, b.len());
    let n = 1 + rng.below(48);
    match rng.below(3) {
        0 => {
            let from = position(rng, map, b.len());
            let chunk: Vec<u8> = b.iter().skip(from).take(n).copied().collect();
            for (i, x) in chunk.into_iter().enumerate() {
                if let Some(d) = b.get_mut(at + i) {
                    *d = x;
                }
            }
        }
        1 => {
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let at = at.min(b.len());
            b.splice(at..at, junk);
        }
        _ => {
            let end = (at + n).min(b.len());
            b.drain(at.min(end)..end);
        }
    }
}

/// Case `i` of a run seeded by `seed`: its kind and the corrupted bytes.
pub fn case(original: &[u8], map: &GgufMap, seed: u64, i: u64) -> (Kind, Vec<u8>) {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let kind = KINDS[(i % KINDS.len() as u64) as usize];
    let mut b = original.to_vec();
    apply(kind, &mut b, map, &mut rng);
    (kind, b)
}
