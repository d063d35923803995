//! Every file the harness writes, and every file argument it reads, goes through this module:
//! one writer that cannot be tricked into clobbering what is not ours, and one reader with a
//! bound for each kind of input. `docs/reliability.md` lists the cases.
//!
//! Writing (`run --out`, `--save-reference`, `report --out`, `diff --html`, the embedded
//! fixture's cache):
//! - The target may be missing, a regular file, or a symlink to a regular file (or a dangling
//!   one). The content goes to a temporary file created new (`O_CREAT | O_EXCL`, which never
//!   follows a symlink planted at its name) under an unpredictable name in the target's folder,
//!   is synced, then renamed over the target. A symlink at the target is therefore replaced by
//!   the new file; the file it pointed to is left as it was.
//! - Anything else at the target (a folder, a character or block device such as `/dev/null`, a
//!   FIFO, a socket, or a symlink to one of those) is refused with one line before any work:
//!   the harness never writes into a special file and never renames over one.
//!
//! Reading: every file argument is read through [`read_bounded`] with the [`Limit`] of its kind
//! (a receipt may be hundreds of MB; a thresholds file is small). Special files (FIFOs,
//! `/dev/zero`) are read with the same bound, so an endless stream ends in one line, not in
//! exhausted memory.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The most a file argument of some kind may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    /// What the file is, for messages: "a receipt".
    pub what: &'static str,
}

/// Receipts (`gate`, `diff`, `report`): a run over a large corpus with traces is hundreds of
/// MB of JSON; more than this is not a receipt the harness wrote.
pub const RECEIPT: Limit = Limit { bytes: 1 << 30, what: "a receipt" };
/// Thresholds files (TOML or JSON of a dozen keys).
pub const THRESHOLDS: Limit = Limit { bytes: 1 << 20, what: "a thresholds file" };
/// Prompt files and tokenizer corpora (text, one entry a line).
pub const TEXT: Limit = Limit { bytes: 256 << 20, what: "a prompts or corpus file" };

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        if b >= 1 << 30 {
            write!(f, "{} GiB", b >> 30)
        } else if b >= 1 << 20 {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: more than {limit}, which is too large for {what} (an endless stream?)", what = .limit.what)]
    TooLarge { path: PathBuf, limit: Limit },
    #[error("{path}: {kind}, not a regular file; the harness writes only regular files (or replaces a symlink to one)")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: is the input {input}; choose another output path")]
    IsInput { path: PathBuf, input: PathBuf },
    // (`error`, not `source`: the message already says it, and a source would repeat it.)
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

/// Reads all of `path`, refusing more than `limit` bytes (regular files are checked by size
/// first; streams are read up to the bound).
pub fn read_bounded(path: &Path, limit: Limit) -> Result<Vec<u8>, FileError> {
    let read_err = |error| FileError::Read { path: path.to_path_buf(), error };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::other("is a folder")));
    }
    if meta.is_file() && meta.len() > limit.bytes {
        return Err(FileError::TooLarge { path: path.to_path_buf(), limit });
    }
    let mut bytes = Vec::new();
    file.take(limit.bytes + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(FileError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_text(path: &Path, limit: Limit) -> Result<String, FileError> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes).map_err(|e| FileError::Read {
        path: path.to_path_buf(),
        error: io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")),
    })
}

/// What is at `path`, if it is not something we may replace: `None` for a missing path, a
/// regular file, or a symlink to a regular file or to nothing.
fn refused_kind(path: &Path) -> Option<&'static str> {
    let link = fs::symlink_metadata(path).ok()?;
    let ty = if link.file_type().is_symlink() {
        // What the link points to decides; a dangling link is replaced like a missing file.
        match fs::metadata(path) {
            Ok(m) => m.file_type(),
            Err(_) => return None,
        }
    } else {
        link.file_type()
    };
    if ty.is_file() {
        None
    } else if ty.is_dir() {
        Some("a folder")
    } else if ty.is_char_device() {
        Some("a character device")
    } else if ty.is_block_device() {
        Some("a block device")
    } else if ty.is_fifo() {
        Some("a FIFO")
    } else if ty.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Refuses `path` as an output if something other than a regular file (or a symlink to one)
/// is there. Call it before long work, so a bad `--out` is reported at once.
pub fn check_output(path: &Path) -> Result<(), FileError> {
    match refused_kind(path) {
        Some(kind) => Err(FileError::NotRegular { path: path.to_path_buf(), kind }),
        None => Ok(()),
    }
}

/// The user's cache folder for this tool: `$XDG_CACHE_HOME/bitnet-parity` or
/// `~/.cache/bitnet-parity`; without either, a private `bitnet-parity-<uid>` folder in the
/// system's temporary folder, refused unless it is a real folder owned by this user (anyone
/// can create names there first).
pub fn cache_root() -> Result<PathBuf, FileError> {
    let home_cache =
        std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache"))
        });
    if let Some(base) = home_cache {
        return Ok(base.join("bitnet-parity"));
    }
    let uid = rustix::process::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("bitnet-parity-{uid}"));
    let write_err = |error| FileError::Write { path: dir.clone(), error };
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(write_err(e)),
    }
    let meta = fs::symlink_metadata(&dir).map_err(write_err)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(write_err(io::Error::other(
            "exists but is not a private folder of this user (set XDG_CACHE_HOME)",
        )));
    }
    Ok(dir)
}

/// Refuses an output path that is one of the inputs (the same file, by device and inode, so a
/// link or another spelling of the path does not get past).
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<(), FileError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(o) = fs::metadata(out) else { return Ok(()) };
    for input in inputs {
        if fs::metadata(input).is_ok_and(|i| i.dev() == o.dev() && i.ino() == o.ino()) {
            return Err(FileError::IsInput { path: out.to_path_buf(), input: input.to_path_buf() });
        }
    }
    Ok(())
}

/// An output being written: a temporary file beside the target, renamed over it by
/// [`commit`](Self::commit); dropped without commit, it is removed.
pub struct AtomicFile {
    target: PathBuf,
    tmp: Option<(PathBuf, File)>,
}

impl AtomicFile {
    /// Checks the target ([`check_output`]), creates its folder if needed and a new temporary
    /// file in it.
    pub fn create(target: &Path) -> Result<AtomicFile, FileError> {
        check_output(target)?;
        let write_err = |error| FileError::Write { path: target.to_path_buf(), error };
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(write_err)?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (tmp, file) = create_new_unpredictable(&dir, &name).map_err(write_err)?;
        Ok(AtomicFile { target: target.to_path_buf(), tmp: Some((tmp, file)) })
    }

    /// The temporary file, to write the content into.
    pub fn file(&mut self) -> &mut File {
        &mut self.tmp.as_mut().expect("not yet committed").1
    }

    /// A write error, naming the final path.
    pub fn write_error(&self, error: io::Error) -> FileError {
        FileError::Write { path: self.target.clone(), error }
    }

    /// Syncs the content and renames it over the target (checked again: something may have
    /// appeared there meanwhile). On failure the temporary file is removed and the target is
    /// as it was.
    pub fn commit(mut self) -> Result<(), FileError> {
        let (tmp, file) = self.tmp.take().expect("committed once");
        let result = (|| {
            file.sync_all().map_err(|error| FileError::Write { path: self.target.clone(), error })?;
            check_output(&self.target)?;
            fs::rename(&tmp, &self.target)
                .map_err(|error| FileError::Write { path: self.target.clone(), error })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `target` through an [`AtomicFile`].
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut out = AtomicFile::create(target)?;
    out.file().write_all(bytes).map_err(|error| FileError::Write { path: target.to_path_buf(), error })?;
    out.commit()
}

/// A new file `.<name>.<random>.tmp` in `dir`, created with `O_EXCL` (a name taken by anything,
/// a planted symlink included, is skipped, never followed), readable by all like a file made
/// with the usual umask.
fn create_new_unpredictable(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    for _ in 0..64 {
        let path = dir.join(format!(".{name}.{:016x}.tmp", random_u64()));
        match File::options().write(true).create_new(true).open(&path) {
            Ok(f) => {
                let _ = f.set_permissions(fs::Permissions::from_mode(0o644));
                return Ok((path, f));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary name after 64 tries"))
}

/// 64 unpredictable bits: the kernel's random source, else std's randomly seeded hasher.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_files_and_links_but_never_special_files() {
        let d = tempdir();
        let f = d.join("r.json");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        // A symlink to a regular file: the link is replaced, its target untouched.
        let victim = d.join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = d.join("link.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        // A folder, and a link to one, are refused; nothing is left behind.
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err();
        assert!(e.to_string().contains("a folder, not a regular file"), "{e}");
        std::os::unix::fs::symlink(&sub, d.join("dirlink")).unwrap();
        assert!(write_atomic(&d.join("dirlink"), b"x").is_err());
        let names: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{names:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let d = tempdir();
        let f = d.join("t");
        fs::write(&f, vec![b'a'; 100]).unwrap();
        let small = Limit { bytes: 99, what: "a test file" };
        assert!(matches!(read_bounded(&f, small), Err(FileError::TooLarge { .. })));
        assert_eq!(read_bounded(&f, Limit { bytes: 100, what: "a test file" }).unwrap().len(), 100);
        fs::remove_dir_all(&d).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("harness-files-{:x}", random_u64()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
