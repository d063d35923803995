//! Reports people look at: `harness report RECEIPT` writes one self-contained HTML page (inline
//! SVG and CSS, no script, nothing fetched from the network), and [`term`] holds the terminal
//! side (colours, progress bars). `harness diff --html` builds its page for two receipts
//! (`crate::diff`'s `page`) from the pieces here: [`html`], `page`, `plot`, `heatmap`.

pub(crate) mod heatmap;
pub mod html;
pub(crate) mod page;
pub(crate) mod plot;
pub mod scale;
pub mod term;

use std::path::{Path, PathBuf};

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
    let out = args.out.clone().unwrap_or_else(|| default_page_path(&args.receipt));
    crate::files::check_not_input(&out, &[&args.receipt])?;
    write_page(&out, &render(&loaded))?;
    println!("report: {}", out.display());
    Ok(Exit::Ok)
}

/// The receipt's path with `.html` for its extension; never the receipt itself (a receipt
/// named `r.html` gets `r.report.html`).
fn default_page_path(receipt: &Path) -> PathBuf {
    let page = receipt.with_extension("html");
    if page == receipt {
        receipt.with_extension("report.html")
    } else {
        page
    }
}

/// The report page of one receipt.
pub fn render(receipt: &LoadedReceipt) -> String {
    page::render(receipt)
}

/// Writes `html` to `path` atomically ([`crate::files::write_atomic`]): a failed write never
/// leaves half a page where a whole one was.
pub fn write_page(path: &Path, html: &str) -> Result<(), Failure> {
    Ok(crate::files::write_atomic(path, html.as_bytes())?)
}
