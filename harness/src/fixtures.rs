//! `harness fixtures`: writes the deterministic fixture models (see the `bitnet-fixtures` crate).

use std::path::PathBuf;

use anyhow::Context;
use bitnet_fixtures::{spec, write_spec, WeightForm};

use crate::exit::{Exit, Failure, OrExit};

#[derive(Debug, clap::Args)]
pub struct FixturesArgs {
    /// Output folder [default: fixtures, or ~/.cache/bitnet-parity/models with --shape].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a model with real shapes instead of the tiny fixtures: `2b` is BitNet b1.58 2B-4T
    /// (n_embd 2560, n_ff 6912, 20/5 heads, vocab 128256).
    #[arg(long, value_parser = ["2b"])]
    pub shape: Option<String>,
    /// Number of layers for --shape.
    #[arg(long, default_value_t = 30, requires = "shape")]
    pub layers: u64,
    /// With --shape, also write the F32 form (about 8 GB per 30 layers).
    #[arg(long, requires = "shape")]
    pub with_f32: bool,
}

pub fn run(args: &FixturesArgs) -> Result<Exit, Failure> {
    let (specs, forms, out) = if args.shape.is_some() {
        let out = match &args.out {
            Some(dir) => dir.clone(),
            None => default_cache_dir().or_exit(Exit::BadInput)?,
        };
        let forms =
            if args.with_f32 { vec![WeightForm::I2S, WeightForm::F32] } else { vec![WeightForm::I2S] };
        (vec![spec::bitnet_2b(args.layers)], forms, out)
    } else {
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("fixtures"));
        (spec::committed(), vec![WeightForm::I2S, WeightForm::F32], out)
    };
    for s in &specs {
        for &form in &forms {
            eprintln!("writing {} ({})…", s.name, form.suffix());
            let path = write_spec(s, form, &out)
                .with_context(|| format!("cannot write fixture {} into {}", s.name, out.display()))
                .or_exit(Exit::BadInput)?;
            println!("{}", path.display());
        }
    }
    Ok(Exit::Ok)
}

/// `$XDG_CACHE_HOME/bitnet-parity/models` or `~/.cache/bitnet-parity/models`: outside any repo.
pub fn default_cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set; pass --out")?;
    Ok(base.join("bitnet-parity").join("models"))
}
