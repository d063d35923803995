//! I2_S flavours: the byte layouts a ternary GGUF tensor can have, their sizes, and how a
//! flavour is chosen for a tensor.
//!
//! # Detection rules
//!
//! For a tensor with ggml dims `[cols, rows, ...]` (`n = cols · rows` elements, `rows` being
//! the product of `dims[1..]`) and `n_bytes` bytes of data:
//!
//! | flavour                         | row length must divide by | bytes needed     | guessed? |
//! |---------------------------------|---------------------------|------------------|----------|
//! | `x86-qk256` (bitnet.cpp x86)    | 128                       | `n/4 + 32`       | yes, 1st |
//! | `bitnet32-f16`                  | 32                        | `n/32 · 10`      | yes, 2nd |
//! | `split32-sibling`               | 32                        | `n/4` (+ sibling `<name>.scale`) | yes, 3rd, only with a sibling |
//! | `arm64` (bitnet.cpp ARM)        | 64                        | `n/4 + 32`       | **never** |
//!
//! 1. If `BITNET_I2S_FLAVOR` (or the explicit override) names a flavour, that flavour is used
//!    when the tensor fits it, and it is an error otherwise. `auto` or empty means no override.
//! 2. Otherwise the candidates are the flavours whose size (and sibling requirement) fits.
//!    `arm64` always has the same size as `x86-qk256` and cannot be told apart from it by
//!    bytes (REFERENCE.md), so it is listed but never chosen: it must be forced.
//! 3. The x86 tail is checked: the f32 at byte `n/4` must be a finite, non-negative scale (the
//!    reference's quantizer writes `max |w|` there). A size-fitting x86 candidate whose tail
//!    is not such a scale is demoted below the other candidates; if it is the only one it is
//!    still chosen and the note says the tail is invalid (see
//!    [`check_i2s_integrity`](super::check_i2s_integrity) for details).
//!    The 28 padding bytes are not checked: the reference leaves them uninitialised.
//! 4. The first remaining candidate in priority order wins. When more than one guessable
//!    flavour fits (x86 and bitnet32-f16 coincide only at `n = 512`), the note says so.
//! 5. No candidate: an error naming the tensor, its shape, its size and what every flavour
//!    would need.

use super::error::QuantError;
use super::layout::{BITNET32_F16_BLOCK_BYTES, I2S_TAIL_BYTES};

/// Environment variable forcing a flavour for every tensor (for experiments).
pub const FLAVOR_ENV: &str = "BITNET_I2S_FLAVOR";

/// A byte layout of a ternary (I2_S-like) tensor. See `flavor.rs` for sizes and
/// detection, and `layout.rs` for where each code sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum I2sFlavor {
    /// bitnet.cpp's x86 I2_S: 128-element chunks of 32 bytes, one f32 tensor scale after the
    /// codes, `n/4 + 32` bytes. In 256-element blocks of 64 bytes this is "QK256".
    X86Qk256,
    /// 32-element blocks of 8 code bytes followed by an inline little-endian f16 scale.
    BitNet32F16,
    /// 32-element blocks of 8 code bytes; the scales live in a sibling `<name>.scale` tensor.
    Split32WithSibling,
    /// bitnet.cpp's ARM I2_S: 64-element chunks of 16 bytes, same tail as x86. Never guessed.
    Arm64,
}

const KNOWN_NAMES: &str =
    "x86-qk256 (qk256, x86, i2s), bitnet32-f16, split32-sibling (split32), arm64 (arm), auto";

impl I2sFlavor {
    /// All flavours, in detection priority order (`Arm64` last: it is never guessed).
    pub const ALL: [I2sFlavor; 4] =
        [I2sFlavor::X86Qk256, I2sFlavor::BitNet32F16, I2sFlavor::Split32WithSibling, I2sFlavor::Arm64];

    /// Canonical name, as accepted by [`from_name`](Self::from_name) and printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            I2sFlavor::X86Qk256 => "x86-qk256",
            I2sFlavor::BitNet32F16 => "bitnet32-f16",
            I2sFlavor::Split32WithSibling => "split32-sibling",
            I2sFlavor::Arm64 => "arm64",
        }
    }

    /// Parses a canonical name or alias, ignoring ASCII case and `_`/`-` differences.
    pub fn from_name(name: &str) -> Option<Self> {
        let key: String =
            name.trim().chars().filter(|c| *c != '-' && *c != '_').map(|c| c.to_ascii_lowercase()).collect();
        match key.as_str() {
            "x86qk256" | "qk256" | "x86" | "i2s" | "i2sx86" => Some(I2sFlavor::X86Qk256),
            "bitnet32f16" => Some(I2sFlavor::BitNet32F16),
            "split32sibling" | "split32withsibling" | "split32" => Some(I2sFlavor::Split32WithSibling),
            "arm64" | "arm" | "i2sarm" => Some(I2sFlavor::Arm64),
            _ => None,
        }
    }

    /// The row length must be a multiple of this many elements.
    pub fn row_multiple(self) -> u64 {
        match self {
            I2sFlavor::X86Qk256 => 128,
            I2sFlavor::BitNet32F16 | I2sFlavor::Split32WithSibling => 32,
            I2sFlavor::Arm64 => 64,
        }
    }

    /// Whether detection may choose this flavour without an override.
    pub fn is_guessable(self) -> bool {
        self != I2sFlavor::Arm64
    }

    /// Whether the flavour needs a sibling `<name>.scale` tensor.
    pub fn needs_sibling(self) -> bool {
        self == I2sFlavor::Split32WithSibling
    }

    /// Bytes this flavour needs for a tensor of ggml `dims` (`dims[0]` = row length), not
    /// counting a sibling scale tensor; `None` when the shape cannot use this flavour.
    pub fn required_bytes(self, dims: &[u64]) -> Option<u64> {
        self.required_bytes_or_reason(dims).ok()
    }

    fn required_bytes_or_reason(self, dims: &[u64]) -> Result<u64, String> {
        let (cols, rows) = shape(dims)?;
        let m = self.row_multiple();
        if cols % m != 0 {
            return Err(format!("row length {cols} is not a multiple of {m}"));
        }
        let n = cols * rows; // shape() checked the product fits in u64
        Ok(match self {
            I2sFlavor::X86Qk256 | I2sFlavor::Arm64 => n / 4 + I2S_TAIL_BYTES as u64,
            I2sFlavor::BitNet32F16 => n / 32 * BITNET32_F16_BLOCK_BYTES as u64,
            I2sFlavor::Split32WithSibling => n / 4,
        })
    }

    /// How many block scales a Split32WithSibling `<name>.scale` tensor holds for a tensor
    /// of `dims`: one per 32-element block (`None` when the shape cannot use 32-blocks).
    pub fn sibling_scale_count(dims: &[u64]) -> Option<u64> {
        let (cols, rows) = shape(dims).ok()?;
        (cols % 32 == 0).then(|| cols * rows / 32)
    }
}

impl std::fmt::Display for I2sFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `(cols, rows)` of ggml dims, rejecting empty, zero and overflowing shapes.
pub(crate) fn shape(dims: &[u64]) -> Result<(u64, u64), String> {
    let (&cols, rest) = dims.split_first().ok_or("no dimensions")?;
    let rows = rest.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or("element count overflows")?;
    if cols == 0 || rows == 0 {
        return Err("a dimension is zero".into());
    }
    cols.checked_mul(rows).ok_or("element count overflows")?;
    Ok((cols, rows))
}

/// The outcome of flavour detection for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct FlavorDetection {
    /// The flavour to use.
    pub flavor: I2sFlavor,
    /// Every flavour whose size fits this tensor (priority order), including never-guessed ones.
    pub candidates: Vec<I2sFlavor>,
    /// Whether the flavour came from `BITNET_I2S_FLAVOR` or an explicit override.
    pub forced: bool,
    /// Human-readable explanation: sizes, ambiguity, tail check. Worth printing in reports.
    pub note: String,
}

impl FlavorDetection {
    /// Whether more than one flavour fits by size (the choice came from priority or override).
    pub fn is_ambiguous(&self) -> bool {
        self.candidates.len() > 1
    }
}

/// Detects the flavour of a ternary tensor, honouring `BITNET_I2S_FLAVOR`.
///
/// `data` is the tensor's bytes (its length is the byte count; the x86 tail is inspected).
/// `has_sibling_scale` says whether a `<name>.scale` tensor exists. See the module docs.
pub fn detect_flavor(
    tensor_name: &str,
    dims: &[u64],
    data: &[u8],
    has_sibling_scale: bool,
) -> Result<FlavorDetection, QuantError> {
    let forced = std::env::var(FLAVOR_ENV).ok();
    detect_flavor_with(tensor_name, dims, data, has_sibling_scale, forced.as_deref())
}

/// The flavour an override names: `None`, `""` or `"auto"` for none, else a flavour name
/// (the values `BITNET_I2S_FLAVOR` takes).
pub fn parse_override(forced: Option<&str>) -> Result<Option<I2sFlavor>, QuantError> {
    match forced.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) if s.eq_ignore_ascii_case("auto") => Ok(None),
        Some(s) => I2sFlavor::from_name(s).map(Some).ok_or_else(|| QuantError::UnknownFlavorName {
            name: s.to_string(),
            origin: FLAVOR_ENV,
            known: KNOWN_NAMES,
        }),
    }
}

/// [`detect_flavor`] with the override given explicitly (`None`, `""` or `"auto"`: none),
/// for tests and for callers that read their configuration elsewhere.
pub fn detect_flavor_with(
    tensor_name: &str,
    dims: &[u64],
    data: &[u8],
    has_sibling_scale: bool,
    forced: Option<&str>,
) -> Result<FlavorDetection, QuantError> {
    let n_bytes = data.len() as u64;
    let bad_shape = |reason: String| QuantError::BadShape {
        tensor: tensor_name.to_string(),
        dims: dims.to_vec(),
        reason,
    };
    let (cols, rows) = shape(dims).map_err(bad_shape)?;
    let n = cols * rows;

    let fits = |f: I2sFlavor| f.required_bytes(dims) == Some(n_bytes);
    let candidates: Vec<I2sFlavor> = I2sFlavor::ALL
        .into_iter()
        .filter(|&f| fits(f) && (!f.needs_sibling() || has_sibling_scale))
        .collect();
    let tail = TailScale::read(data, n);

    let forced_flavor = parse_override(forced)?;

    if let Some(flavor) = forced_flavor {
        let mismatch = |reason: String| QuantError::ForcedFlavorMismatch {
            tensor: tensor_name.to_string(),
            dims: dims.to_vec(),
            n_bytes,
            flavor: flavor.name(),
            reason,
        };
        let need = flavor.required_bytes_or_reason(dims).map_err(mismatch)?;
        if need != n_bytes {
            return Err(mismatch(format!("it needs {need} bytes")));
        }
        if flavor.needs_sibling() && !has_sibling_scale {
            return Err(mismatch(format!("no sibling `{tensor_name}.scale` tensor holds its block scales")));
        }
        let mut note = format!("{} forced by override", flavor.name());
        if flavor == I2sFlavor::X86Qk256 || flavor == I2sFlavor::Arm64 {
            note.push_str(&format!("; tail scale {}", tail.describe()));
        }
        return Ok(FlavorDetection { flavor, candidates, forced: true, note });
    }

    let mut ranked: Vec<I2sFlavor> = candidates.iter().copied().filter(|f| f.is_guessable()).collect();
    // Stable sort: a size-fitting x86 candidate with an invalid tail goes last.
    ranked.sort_by_key(|&f| f == I2sFlavor::X86Qk256 && !tail.is_valid());

    let Some(&flavor) = ranked.first() else {
        return Err(no_fit_error(tensor_name, dims, n_bytes, has_sibling_scale, &candidates));
    };

    let names = |v: &[I2sFlavor]| v.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
    let mut note = format!("{n_bytes} bytes fit {}", names(&candidates));
    if ranked.len() > 1 {
        note.push_str(&format!(
            "; ambiguous between {}, chose {} by priority",
            names(&ranked),
            flavor.name()
        ));
    } else {
        note.push_str(&format!("; chose {}", flavor.name()));
    }
    if candidates.contains(&I2sFlavor::Arm64) {
        note.push_str(&format!(
            "; arm64 has the same size and is never guessed (set {FLAVOR_ENV}=arm64 for files \
             quantized by an ARM build)"
        ));
    }
    if candidates.contains(&I2sFlavor::X86Qk256) {
        note.push_str(&format!("; x86 tail scale {}", tail.describe()));
        if !tail.is_valid() {
            note.push_str(" (not a valid I2_S scale: check the tensor's integrity)");
        }
    }
    if fits(I2sFlavor::Split32WithSibling) && !has_sibling_scale {
        note.push_str(&format!("; split32-sibling also fits by size but no `{tensor_name}.scale` exists"));
    }
    Ok(FlavorDetection { flavor, candidates, forced: false, note })
}

fn no_fit_error(
    tensor_name: &str,
    dims: &[u64],
    n_bytes: u64,
    has_sibling_scale: bool,
    candidates: &[I2sFlavor],
) -> QuantError {
    let needs = I2sFlavor::ALL
        .iter()
        .map(|&f| {
            let need = match f.required_bytes_or_reason(dims) {
                Ok(b) => format!("{b} bytes"),
                Err(reason) => format!("n/a ({reason})"),
            };
            let extra = match f {
                I2sFlavor::Split32WithSibling if !has_sibling_scale => {
                    format!(" plus a `{tensor_name}.scale` tensor, which is absent")
                }
                I2sFlavor::Arm64 if candidates.contains(&f) => {
                    format!(" (fits, but is never guessed: set {FLAVOR_ENV}=arm64)")
                }
                _ => String::new(),
            };
            format!("{} {need}{extra}", f.name())
        })
        .collect::<Vec<_>>()
        .join("; ");
    QuantError::NoFlavorFits { tensor: tensor_name.to_string(), dims: dims.to_vec(), n_bytes, needs }
}

/// The f32 at byte `n/4` of an x86/ARM I2_S tensor, if the data is long enough to hold it.
#[derive(Debug, Clone, Copy)]
struct TailScale(Option<f32>);

impl TailScale {
    fn read(data: &[u8], n: u64) -> Self {
        let at = (n / 4) as usize;
        TailScale(data.get(at..at + 4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }

    /// A valid scale is finite with its sign bit clear (`max |w|` is never negative).
    fn is_valid(self) -> bool {
        matches!(self.0, Some(s) if s.is_finite() && s.is_sign_positive())
    }

    fn describe(self) -> String {
        match self.0 {
            Some(s) => format!("{s:e}"),
            None => "absent".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in I2sFlavor::ALL {
            assert_eq!(I2sFlavor::from_name(f.name()), Some(f));
        }
        assert_eq!(I2sFlavor::from_name("QK256"), Some(I2sFlavor::X86Qk256));
        assert_eq!(I2sFlavor::from_name("Split32_With_Sibling"), Some(I2sFlavor::Split32WithSibling));
        assert_eq!(I2sFlavor::from_name("tl1"), None);
    }

    #[test]
    fn sizes() {
        let dims = [2560u64, 6912];
        let n = 2560 * 6912;
        assert_eq!(I2sFlavor::X86Qk256.required_bytes(&dims), Some(n / 4 + 32));
        assert_eq!(I2sFlavor::Arm64.required_bytes(&dims), Some(n / 4 + 32));
        assert_eq!(I2sFlavor::BitNet32F16.required_bytes(&dims), Some(n / 32 * 10));
        assert_eq!(I2sFlavor::Split32WithSibling.required_bytes(&dims), Some(n / 4));
        assert_eq!(I2sFlavor::X86Qk256.required_bytes(&[96, 4]), None);
        assert_eq!(I2sFlavor::BitNet32F16.required_bytes(&[96, 4]), Some(120));
        assert_eq!(I2sFlavor::X86Qk256.required_bytes(&[]), None);
        assert_eq!(I2sFlavor::X86Qk256.required_bytes(&[128, 0]), None);
        assert_eq!(I2sFlavor::X86Qk256.required_bytes(&[u64::MAX, 2]), None);
    }
}
