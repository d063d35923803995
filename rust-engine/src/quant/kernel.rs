//! Run-time kernel selection: scalar, AVX2, AVX-VNNI or AVX-512 VNNI, chosen once, with a
//! reportable name.
//!
//! `BITNET_QK256_IMPL` = `scalar` | `avx2` | `avxvnni` | `avx512vnni` | `auto` (default: the
//! best this CPU runs: `avx512vnni`, else `avxvnni`, else `avx2`, else `scalar`).
//! Every kernel computes the same exact integer sums, so the choice changes speed only.

use std::sync::OnceLock;

use super::error::QuantError;

/// Environment variable choosing the QK256 kernel.
pub const KERNEL_ENV: &str = "BITNET_QK256_IMPL";

/// A kernel implementation. Only constructible for kernels this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qk256Kernel(Imp);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(super::avx2::Avx2Token),
    #[cfg(target_arch = "x86_64")]
    AvxVnni(super::avxvnni::AvxVnniToken),
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni(super::avx512vnni::VnniToken),
}

impl Qk256Kernel {
    /// The portable scalar kernel: plain loops, the oracle the SIMD kernels are tested against.
    pub fn scalar() -> Self {
        Qk256Kernel(Imp::Scalar)
    }

    /// The AVX2 kernel (needs AVX2 and FMA), if this CPU has them.
    pub fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            super::avx2::Avx2Token::detect().map(|t| Qk256Kernel(Imp::Avx2(t)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The AVX-VNNI kernel (the 256-bit VEX `vpdpbusd` of Intel client CPUs; needs AVX-VNNI,
    /// AVX2 and FMA), if this CPU has them.
    pub fn avxvnni() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            super::avxvnni::AvxVnniToken::detect().map(|t| Qk256Kernel(Imp::AvxVnni(t)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The AVX-512 VNNI kernel (needs AVX-512 F, BW, VL and VNNI, and AVX2 and FMA for the
    /// activations), if this CPU has them.
    pub fn avx512vnni() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            super::avx512vnni::VnniToken::detect().map(|t| Qk256Kernel(Imp::Avx512Vnni(t)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Self {
        Self::avx512vnni().or_else(Self::avxvnni).or_else(Self::avx2).unwrap_or_else(Self::scalar)
    }

    /// Every kernel this CPU runs, the scalar oracle first (for tests and measurements).
    pub fn available() -> Vec<Self> {
        [Some(Self::scalar()), Self::avx2(), Self::avxvnni(), Self::avx512vnni()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Resolves a setting (`None`, `""` or `auto`: best; `scalar`; `avx2`; `avxvnni`;
    /// `avx512vnni`),
    /// case-insensitive.
    /// Asking for a kernel this CPU cannot run is an error, never a silent fallback.
    pub fn resolve(setting: Option<&str>) -> Result<Self, QuantError> {
        let value = setting.map(str::trim).unwrap_or("");
        match value.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::best()),
            "scalar" => Ok(Self::scalar()),
            "avx2" => Self::avx2()
                .ok_or(QuantError::KernelUnavailable { kernel: "avx2", reason: "the CPU lacks AVX2 or FMA" }),
            "avxvnni" => Self::avxvnni().ok_or(QuantError::KernelUnavailable {
                kernel: "avxvnni",
                reason: "the CPU lacks AVX-VNNI (or AVX2 or FMA)",
            }),
            "avx512vnni" => Self::avx512vnni().ok_or(QuantError::KernelUnavailable {
                kernel: "avx512vnni",
                reason: "the CPU lacks AVX-512 F, BW, VL or VNNI (or AVX2 or FMA)",
            }),
            _ => Err(QuantError::UnknownKernel { value: value.to_string(), origin: KERNEL_ENV }),
        }
    }

    /// The kernel selected by `BITNET_QK256_IMPL`, resolved once per process.
    pub fn from_env() -> Result<Self, QuantError> {
        static CHOSEN: OnceLock<Result<Qk256Kernel, QuantError>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| {
                let value = std::env::var(KERNEL_ENV).ok();
                Self::resolve(value.as_deref())
            })
            .clone()
    }

    /// `"scalar"`, `"avx2"`, `"avxvnni"` or `"avx512vnni"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Imp::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Imp::AvxVnni(_) => "avxvnni",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512Vnni(_) => "avx512vnni",
        }
    }

    /// The AVX2 ternary kernel's token, when this is that kernel.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx2_token(self) -> Option<super::avx2::Avx2Token> {
        match self.0 {
            Imp::Avx2(t) => Some(t),
            Imp::Scalar | Imp::AvxVnni(_) | Imp::Avx512Vnni(_) => None,
        }
    }

    /// The AVX-VNNI ternary kernel's token, when this is that kernel.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avxvnni_token(self) -> Option<super::avxvnni::AvxVnniToken> {
        match self.0 {
            Imp::AvxVnni(t) => Some(t),
            Imp::Scalar | Imp::Avx2(_) | Imp::Avx512Vnni(_) => None,
        }
    }

    /// The AVX-512 VNNI ternary kernel's token, when this is that kernel.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn vnni_token(self) -> Option<super::avx512vnni::VnniToken> {
        match self.0 {
            Imp::Avx512Vnni(t) => Some(t),
            Imp::Scalar | Imp::Avx2(_) | Imp::AvxVnni(_) => None,
        }
    }

    /// The token of the AVX2 activation quantizer, which every SIMD kernel uses.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn act_avx2_token(self) -> Option<super::avx2::Avx2Token> {
        match self.0 {
            Imp::Avx2(t) => Some(t),
            Imp::AvxVnni(t) => Some(t.avx2()),
            Imp::Avx512Vnni(t) => Some(t.avx2()),
            Imp::Scalar => None,
        }
    }
}

/// Name of the kernel selected by `BITNET_QK256_IMPL` (`"scalar"`, `"avx2"`, `"avxvnni"` or
/// `"avx512vnni"`), or
/// `"invalid"` when the variable holds a bad value (building a matrix then reports the error).
pub fn kernel_name() -> &'static str {
    Qk256Kernel::from_env().map_or("invalid", Qk256Kernel::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_settings() {
        assert_eq!(Qk256Kernel::resolve(Some("scalar")).unwrap().name(), "scalar");
        assert_eq!(Qk256Kernel::resolve(Some(" Scalar ")).unwrap().name(), "scalar");
        assert_eq!(Qk256Kernel::resolve(None).unwrap(), Qk256Kernel::best());
        assert_eq!(Qk256Kernel::resolve(Some("auto")).unwrap(), Qk256Kernel::best());
        for name in ["avx2", "avxvnni", "avx512vnni"] {
            match Qk256Kernel::resolve(Some(name)) {
                Ok(k) => assert_eq!(k.name(), name),
                Err(e) => assert!(matches!(e, QuantError::KernelUnavailable { .. })),
            }
        }
        assert_eq!(Qk256Kernel::available().last().copied(), Some(Qk256Kernel::best()));
        let err = Qk256Kernel::resolve(Some("neon")).unwrap_err();
        assert!(err.to_string().contains("neon"), "{err}");
    }
}
