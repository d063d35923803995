//! Which reference-build profile the Rust engine mirrors: the one of the build it faces.
//!
//! The reference's float numerics depend on the ISA it was compiled for (see
//! `bitnet_engine::profile`), so the profile is read from the build itself: the live library's
//! build-info ISA macros, or those a saved reference's footer recorded. `--reference-profile`
//! overrides it. A build no profile mirrors (an AVX-only or ARM build, a prebuilt library of
//! unknown ISA) is a hazard: the run goes on with the host's profile, the receipt records the
//! hazard (kind `reference_profile` in `hazards`) and the verdict fails on it, unless the user
//! chose the profile explicitly.

use std::fmt;

use bitnet_engine::profile::{NoProfile, RefProfile};

use crate::receipt::{Hazard, ReferenceProfile};

/// Where the profile the Rust engine mirrors came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSource {
    /// The live reference library's build-info (its ISA macros).
    BuildInfo,
    /// The footer of the saved reference replayed (`--reference FILE`).
    SavedReference,
    /// `--reference-profile`.
    Override,
    /// The reference build has no profile: the host's, as a fallback (a hazard).
    Host,
}

impl ProfileSource {
    /// The receipt's `engines.rust.reference_profile.source`.
    pub fn name(self) -> &'static str {
        match self {
            ProfileSource::BuildInfo => "build-info",
            ProfileSource::SavedReference => "saved-reference",
            ProfileSource::Override => "override",
            ProfileSource::Host => "host",
        }
    }
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The profile chosen for a run, and the hazard of the build, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileChoice {
    pub profile: RefProfile,
    pub source: ProfileSource,
    /// Why no profile mirrors the reference build (its deciding macros and the reason), or
    /// `None` when one does.
    pub hazard: Option<String>,
}

impl ProfileChoice {
    /// The profile for a reference built with `isa` macros, read from `from` (build-info or a
    /// saved reference); `chosen` (`--reference-profile`) wins when given.
    pub fn for_build<S: AsRef<str>>(
        isa: &[S],
        from: ProfileSource,
        chosen: Option<RefProfile>,
    ) -> ProfileChoice {
        let detected = RefProfile::from_isa_macros(isa);
        let hazard = detected.as_ref().err().map(|e| hazard_text(isa.is_empty(), e));
        let (profile, source) = match (chosen, detected) {
            (Some(p), _) => (p, ProfileSource::Override),
            (None, Ok(p)) => (p, from),
            (None, Err(_)) => (RefProfile::host(), ProfileSource::Host),
        };
        ProfileChoice { profile, source, hazard }
    }

    /// The receipt's `reference_profile` hazard, when the build has no profile: it fails the
    /// verdict unless `--reference-profile` chose the profile.
    pub fn hazard_record(&self) -> Option<Hazard> {
        let why = self.hazard.as_ref()?;
        Some(crate::hazards::profile_hazard(why, self.source == ProfileSource::Override))
    }

    /// The receipt's record of it.
    pub fn record(&self) -> ReferenceProfile {
        ReferenceProfile { name: self.profile.name().into(), source: self.source.name().into() }
    }

    /// The warning printed when the build has no profile, or `None`.
    pub fn warning(&self) -> Option<String> {
        let hazard = self.hazard.as_ref()?;
        Some(match self.source {
            ProfileSource::Override => format!(
                "warning: the reference build has no profile ({hazard}); mirroring {} as \
                 --reference-profile asks",
                self.profile
            ),
            _ => format!(
                "warning: the reference build has no profile ({hazard}); mirroring the host's {} \
                 and failing the verdict (--reference-profile avx2|avx512 compares anyway)",
                self.profile
            ),
        })
    }
}

/// Why the build has no profile: the detail of the receipt's `reference_profile` hazard.
fn hazard_text(no_macros: bool, e: &NoProfile) -> String {
    if no_macros {
        return "no ISA macros recorded for this build (a prebuilt library, or build-info without \
                them): its float numerics are unknown"
            .into();
    }
    let present = if e.present.is_empty() { "none".to_string() } else { e.present.join(" ") };
    format!("{} (deciding macros: {present})", e.reason)
}

/// `--reference-profile NAME`.
pub fn parse_profile(s: &str) -> Result<RefProfile, String> {
    RefProfile::parse(s).ok_or_else(|| {
        let names: Vec<&str> = RefProfile::ALL.iter().map(|p| p.name()).collect();
        format!("{s:?} is not a reference profile (expected {})", names.join(" or "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3: [&str; 5] = ["__AVX__", "__AVX2__", "__FMA__", "__F16C__", "__SSE2__"];
    const ZEN4: [&str; 7] =
        ["__AVX__", "__AVX2__", "__FMA__", "__F16C__", "__SSE2__", "__AVX512F__", "__AVX512DQ__"];

    #[test]
    fn the_build_decides_unless_overridden() {
        let c = ProfileChoice::for_build(&V3, ProfileSource::BuildInfo, None);
        assert_eq!((c.profile, c.source, c.hazard), (RefProfile::Avx2, ProfileSource::BuildInfo, None));
        let c = ProfileChoice::for_build(&ZEN4, ProfileSource::SavedReference, None);
        assert_eq!(c.profile, RefProfile::Avx512);
        assert_eq!(c.source, ProfileSource::SavedReference);
        assert!(c.warning().is_none());
        let c = ProfileChoice::for_build(&ZEN4, ProfileSource::BuildInfo, Some(RefProfile::Avx2));
        assert_eq!((c.profile, c.source, &c.hazard), (RefProfile::Avx2, ProfileSource::Override, &None));
        assert_eq!(c.record(), ReferenceProfile { name: "avx2".into(), source: "override".into() });
    }

    #[test]
    fn a_build_without_profile_is_a_hazard_named_by_its_macros() {
        let avx_only = ["__AVX__", "__SSE2__"];
        let c = ProfileChoice::for_build(&avx_only, ProfileSource::BuildInfo, None);
        assert_eq!((c.profile, c.source), (RefProfile::host(), ProfileSource::Host));
        let h = c.hazard.clone().unwrap();
        assert!(h.contains("deciding macros: __AVX__") && h.contains("AVX2"), "{h}");
        assert!(c.warning().unwrap().contains("failing the verdict"));
        let c = ProfileChoice::for_build(&avx_only, ProfileSource::BuildInfo, Some(RefProfile::Avx512));
        assert_eq!((c.profile, c.source), (RefProfile::Avx512, ProfileSource::Override));
        assert!(c.hazard.is_some());
        assert!(!c.warning().unwrap().contains("failing"));
        let c = ProfileChoice::for_build::<String>(&[], ProfileSource::BuildInfo, None);
        assert!(c.hazard.unwrap().contains("no ISA macros recorded"));
        let c = ProfileChoice::for_build(&["__ARM_NEON"], ProfileSource::SavedReference, None);
        assert!(c.hazard.unwrap().contains("deciding macros: __ARM_NEON"));
    }

    #[test]
    fn profile_names_parse() {
        assert_eq!(parse_profile("avx512"), Ok(RefProfile::Avx512));
        assert!(parse_profile("avx10").unwrap_err().contains("avx2 or avx512"));
    }
}
