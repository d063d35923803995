//! The environment variables that choose how the harness works, checked once before any
//! command starts: a value that means nothing is one line and exit 2, never a silent default
//! or a failure half-way through a run. (`CROSSVAL_GGUF`, `BITNET_CPP_DIR` and
//! `BITNET_CPP_BUILD` are checked where they are used, with the same exit codes as the flags
//! they stand for.)

use anyhow::anyhow;
use bitnet_cpp::LogLevel;
use bitnet_engine::quant::{parse_override, Qk256Kernel, FLAVOR_ENV};

use crate::exit::{Exit, Failure};

/// Checks `BITNET_QK256_IMPL`, `BITNET_I2S_FLAVOR` and `BITNET_CPP_LOG`.
pub fn check() -> Result<(), Failure> {
    let bad = |e: String| Err(Failure::new(Exit::BadInput, anyhow!(e)));
    if let Err(e) = Qk256Kernel::from_env() {
        return bad(e.to_string());
    }
    if let Some(v) = std::env::var_os(FLAVOR_ENV) {
        match v.to_str() {
            Some(s) => {
                if let Err(e) = parse_override(Some(s)) {
                    return bad(e.to_string());
                }
            }
            None => return bad(format!("{FLAVOR_ENV} is not UTF-8")),
        }
    }
    if let Some(v) = std::env::var_os("BITNET_CPP_LOG").filter(|v| !v.is_empty()) {
        if v.to_str().and_then(LogLevel::parse).is_none() {
            return bad(format!(
                "BITNET_CPP_LOG={}: expected none, error, warn, info or debug",
                v.to_string_lossy()
            ));
        }
    }
    Ok(())
}
