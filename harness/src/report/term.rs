//! The terminal: colour on stdout, progress on stderr.
//!
//! Colour only when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org), so
//! that pipes, files and CI logs get plain text. Progress bars and spinners only when stderr
//! is a terminal and `--quiet` is off; otherwise the same steps are announced as plain lines
//! (which scripts and tests read), exactly as before bars existed.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// `text` with every control character other than line breaks and tabs shown as an escape
/// (`\x1b`, `\u{9b}`), so that strings from files (a receipt's prompts, paths, reasons; an
/// error naming a field) cannot move the cursor, recolour or retitle the user's terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether to colour a stream that `is_terminal`, given the value of `NO_COLOR`.
pub fn colour_wanted(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// What a piece of text says, which decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Warn,
    /// Unusual but not bad (an invalid input verdict).
    Note,
    Dim,
}

/// ANSI colouring, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    pub enabled: bool,
}

impl Paint {
    pub const PLAIN: Paint = Paint { enabled: false };

    /// Colour for stdout, if it is a terminal and `NO_COLOR` allows.
    pub fn stdout() -> Paint {
        let no_color = std::env::var_os("NO_COLOR");
        Paint { enabled: colour_wanted(std::io::stdout().is_terminal(), no_color.as_deref()) }
    }

    fn code(tone: Tone) -> &'static str {
        match tone {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Warn => "33",
            Tone::Note => "35",
            Tone::Dim => "2",
        }
    }

    pub fn paint(&self, tone: Tone, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{}m{text}\x1b[0m", Self::code(tone))
        } else {
            text.to_string()
        }
    }

    /// `PASS` in bold green, `FAIL` in bold red, ...; plain upper case without colour.
    pub fn verdict(&self, status: &str) -> String {
        let word = status.to_uppercase();
        if !self.enabled {
            return word;
        }
        format!("\x1b[1;{}m{word}\x1b[0m", Self::code(verdict_tone(status)))
    }

    /// The same colour for a table cell (tabled measures widths without it).
    pub fn cell(&self, tone: Tone) -> Option<tabled::settings::Color> {
        self.enabled.then(|| tabled::settings::Color::new(format!("\x1b[{}m", Self::code(tone)), "\x1b[0m"))
    }
}

pub fn verdict_tone(status: &str) -> Tone {
    match status {
        "pass" => Tone::Good,
        "fail" => Tone::Bad,
        "incomplete" => Tone::Warn,
        _ => Tone::Note,
    }
}

/// Progress of a long command on stderr: a spinner per step, a bar over positions.
pub struct Progress {
    quiet: bool,
    /// Bars are drawn (stderr is a terminal, not `--quiet`).
    visible: bool,
    current: RefCell<Option<ProgressBar>>,
    /// Where a run is: case (1-based) of cases, positions of the case, positions done in all.
    at: Cell<At>,
    /// When the last throttled progress line was printed (no bar, many cases).
    last_line: Cell<Option<Instant>>,
}

/// Where a run is, for progress lines: `case 812/5000, position 41/77, 3,204,117 positions done`.
#[derive(Debug, Clone, Copy, Default)]
struct At {
    case: usize,
    cases: usize,
    n_positions: usize,
    position: usize,
    done: u64,
}

/// Up to this many cases, every case and every 64th position get a line when no bar is drawn
/// (as scripts and tests read them); beyond, a corpus of thousands of prompts gets one line
/// every [`LINE_EVERY`].
const CASES_WITH_LINES: usize = 100;
const LINE_EVERY: Duration = Duration::from_secs(2);

/// `3204117` as `3,204,117`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress::with_visibility(quiet, !quiet && std::io::stderr().is_terminal())
    }

    /// For tests: bars drawn or not regardless of the terminal.
    pub fn with_visibility(quiet: bool, visible: bool) -> Progress {
        Progress {
            quiet,
            visible: visible && !quiet,
            current: RefCell::new(None),
            at: Cell::new(At::default()),
            last_line: Cell::new(None),
        }
    }

    /// Whether bars are drawn; when not, callers print their own occasional progress lines.
    pub fn visible(&self) -> bool {
        self.visible
    }

    /// A line for the user (not with `--quiet`), above the bar when there is one; control
    /// characters (from a model's strings, say) escaped.
    pub fn say(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let msg = &*printable(msg);
        match self.current.borrow().as_ref() {
            Some(bar) if self.visible => bar.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// A spinner saying what is being done (model loading, starting the reference, ...) until
    /// the next step, bar or [`Progress::done`].
    pub fn step(&self, msg: &str) {
        if !self.visible {
            return;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.replace(bar);
    }

    /// A bar over `total` positions, with speed and time left.
    pub fn positions(&self, total: u64) {
        if !self.visible {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg} [{bar:32}] {human_pos}/{human_len} positions · {rate} · {elapsed} elapsed, ~{eta} left",
        )
        .map(|s| {
            s.progress_chars("=> ").with_key("rate", |st: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", st.per_sec());
            })
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        self.replace(bar);
    }

    /// Case `case` (1-based) of `cases` starts: `n_prompt` prompt tokens, `n_positions` to
    /// evaluate. On the bar's message; without a bar, a line per case for a few cases, one
    /// line every two seconds for a corpus.
    pub fn case(&self, case: usize, cases: usize, n_prompt: usize, n_positions: usize) {
        let at = At { case, cases, n_positions, position: 0, ..self.at.get() };
        self.at.set(at);
        if self.visible {
            self.set_message(&format!("case {case}/{cases}"));
        } else if cases <= CASES_WITH_LINES {
            self.say(&format!("case {case}/{cases}: {n_prompt} prompt tokens, {n_positions} positions"));
        } else {
            self.throttled_line(case == 1);
        }
    }

    /// One more position of the current case is done.
    pub fn position_done(&self) {
        let mut at = self.at.get();
        at.position += 1;
        at.done += 1;
        self.at.set(at);
        if self.visible {
            self.set_message(&format!(
                "case {}/{} · position {}/{}",
                at.case, at.cases, at.position, at.n_positions
            ));
            self.inc(1);
        } else if at.cases <= CASES_WITH_LINES {
            if !self.quiet && at.position.is_multiple_of(64) {
                eprintln!("  {}/{} positions", at.position, at.n_positions);
            }
        } else {
            self.throttled_line(at.case == at.cases && at.position == at.n_positions);
        }
    }

    /// `case 812/5000, position 41/77, 3,204,117 positions done`, if `force` or it is time.
    fn throttled_line(&self, force: bool) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        if !force && self.last_line.get().is_some_and(|t| now.duration_since(t) < LINE_EVERY) {
            return;
        }
        self.last_line.set(Some(now));
        let at = self.at.get();
        eprintln!(
            "case {}/{}, position {}/{}, {} positions done",
            grouped(at.case as u64),
            grouped(at.cases as u64),
            at.position,
            at.n_positions,
            grouped(at.done)
        );
    }

    pub fn set_message(&self, msg: &str) {
        if let Some(bar) = self.current.borrow().as_ref() {
            bar.set_message(msg.to_string());
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = self.current.borrow().as_ref() {
            bar.inc(n);
        }
    }

    /// Clears whatever is drawn (before printing results on stdout).
    pub fn done(&self) {
        if let Some(bar) = self.current.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }

    fn replace(&self, bar: ProgressBar) {
        if let Some(old) = self.current.borrow_mut().replace(bar) {
            old.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// An early return (an error) must not leave a spinner on the screen above the message.
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn paint_plain_and_coloured() {
        assert_eq!(Paint::PLAIN.verdict("pass"), "PASS");
        assert_eq!(Paint::PLAIN.paint(Tone::Bad, "x"), "x");
        assert!(Paint::PLAIN.cell(Tone::Bad).is_none());
        let on = Paint { enabled: true };
        assert_eq!(on.verdict("pass"), "\x1b[1;32mPASS\x1b[0m");
        assert_eq!(on.verdict("fail"), "\x1b[1;31mFAIL\x1b[0m");
        assert_eq!(on.verdict("incomplete"), "\x1b[1;33mINCOMPLETE\x1b[0m");
        assert_eq!(on.paint(Tone::Dim, "x"), "\x1b[2mx\x1b[0m");
    }

    #[test]
    fn grouped_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(3_204_117), "3,204,117");
    }

    #[test]
    fn progress_counts_cases_and_positions() {
        let p = Progress::with_visibility(true, false);
        p.case(1, 5000, 3, 2);
        p.position_done();
        p.position_done();
        p.case(2, 5000, 3, 4);
        p.position_done();
        let at = p.at.get();
        assert_eq!((at.case, at.cases, at.position, at.n_positions, at.done), (2, 5000, 1, 4, 3));
    }

    #[test]
    fn hidden_progress_is_inert() {
        let p = Progress::with_visibility(false, false);
        p.step("loading");
        p.positions(10);
        p.inc(3);
        p.set_message("case 1/1");
        assert!(p.current.borrow().is_none());
        p.done();
        let q = Progress::with_visibility(true, true);
        assert!(!q.visible());
    }
}
