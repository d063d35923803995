//! Reports people look at: `harness report RECEIPT` writes one self-contained HTML page (inline
//! SVG and CSS, no script, nothing fetched from the network), `harness diff --html` one for two
//! receipts, and [`term`] holds the terminal side (colours, progress bars).

mod diff_page;
mod heatmap;
pub mod html;
mod page;
mod plot;
pub mod scale;
pub mod term;

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::diff::DiffReport;
use crate::exit::{Exit, Failure};
use crate::schema::{self, LoadedReceipt};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The receipt (`harness run` writes them to receipts/runs/).
    pub receipt: PathBuf,
    /// Where to write the page. Default: the receipt's path with `.html`.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> Result<crate::exit::Exit, Failure> {
    let loaded = schema::load_receipt(&args.receipt)?;
    let out = args.out.clone().unwrap_or_else(|| args.receipt.with_extension("html"));
    write_page(&out, &render(&loaded))?;
    println!("report: {}", out.display());
    Ok(Exit::Ok)
}

/// The report page of one receipt.
pub fn render(receipt: &LoadedReceipt) -> String {
    page::render(receipt)
}

/// The page comparing two receipts (`diff --html`).
pub fn render_diff(old: &LoadedReceipt, new: &LoadedReceipt, report: &DiffReport) -> String {
    diff_page::render(old, new, report)
}

/// Writes `html` to `path` through a temporary file renamed into place, so a failed write never
/// leaves half a page where a whole one was. Failures are `Exit::OutputFailed`.
pub fn write_page(path: &Path, html: &str) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::new(Exit::OutputFailed, anyhow!("cannot write the report {}: {e}", path.display()))
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, html).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}
