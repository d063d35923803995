//! Reading receipts back: version check, JSON Schema validation, then the typed [`Receipt`].
//!
//! The schema is `receipts/receipt.schema.json`, compiled into the binary. Its rule for
//! versions (also written in the schema's description):
//! - another major version than [`SCHEMA_MAJOR`] is refused before anything else;
//! - a minor version up to ours is validated strictly: every object we describe forbids keys
//!   it does not list, so any drift of the format is caught;
//! - a newer minor version (written by a newer harness, which may only add optional fields) is
//!   validated with those prohibitions lifted: the fields we know must still be right, and the
//!   fields added since are reported as ignored and dropped before the typed read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::exit::{Exit, Failure};
use crate::receipt::{Receipt, SCHEMA_MAJOR, SCHEMA_VERSION};

/// The receipt's JSON Schema (draft 2020-12), as committed.
pub const SCHEMA_TEXT: &str = include_str!("../../receipts/receipt.schema.json");

/// Longest stretch of a validator message we print: messages quote the offending value,
/// which may be a whole array of positions.
const MAX_MESSAGE_CHARS: usize = 200;

/// A `MAJOR.MINOR.PATCH` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH` (three unsigned integers, nothing else).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version { major: next()?, minor: next()?, patch: next()? };
        parts.next().is_none().then_some(v)
    }

    /// The version this build writes.
    pub fn ours() -> Version {
        Version::parse(SCHEMA_VERSION).expect("SCHEMA_VERSION is MAJOR.MINOR.PATCH")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Everything wrong a receipt can be. Each message names the JSON field concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("the top level is not a JSON object")]
    NotAnObject,
    #[error("no `schema_version` field (is this a bitnet-parity receipt?)")]
    NoVersion,
    #[error("`schema_version` {0} is not MAJOR.MINOR.PATCH")]
    BadVersion(String),
    #[error("`schema_version` {found} has major version {}; this harness reads {SCHEMA_MAJOR}.x receipts only", found.major)]
    UnknownMajor { found: Version },
    #[error("fails the receipt schema at {path}: {message}{}", more_suffix(*more))]
    Schema { path: String, message: String, more: usize },
    #[error("does not match the receipt types: {0}")]
    Types(serde_json::Error),
}

fn more_suffix(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more schema error{})", if n == 1 { "" } else { "s" }),
    }
}

/// A receipt as read: the typed value, the JSON it came from, and what was ignored.
#[derive(Debug, Clone)]
pub struct LoadedReceipt {
    pub path: PathBuf,
    pub version: Version,
    pub receipt: Receipt,
    /// The JSON as read (for a newer minor version, without the fields this build ignores).
    pub json: Value,
    /// Dotted paths of fields dropped because a newer minor version added them.
    pub ignored_fields: Vec<String>,
}

/// Reads, checks and types the receipt at `path`. Every problem is `Exit::BadInput` with a
/// one-line message naming the file and the field.
pub fn read_receipt(path: &Path) -> Result<Receipt, Failure> {
    load_receipt(path).map(|l| l.receipt)
}

/// Like [`read_receipt`], keeping the JSON and the version.
pub fn load_receipt(path: &Path) -> Result<LoadedReceipt, Failure> {
    let failure =
        |e: ReceiptError| Failure::new(Exit::BadInput, anyhow::anyhow!("receipt {}: {e}", path.display()));
    let text = crate::files::read_bounded(path, crate::files::RECEIPT).map_err(|e| match e {
        crate::files::FileError::Read { error, .. } => failure(error.into()),
        other => other.into(),
    })?;
    let (version, receipt, json, ignored_fields) = parse_receipt(&text).map_err(failure)?;
    Ok(LoadedReceipt { path: path.to_path_buf(), version, receipt, json, ignored_fields })
}

/// The checks of [`load_receipt`] on bytes in memory: (version, typed receipt, JSON, ignored fields).
pub fn parse_receipt(bytes: &[u8]) -> Result<(Version, Receipt, Value, Vec<String>), ReceiptError> {
    let mut json: Value = serde_json::from_slice(bytes).map_err(ReceiptError::Json)?;
    let version = check_version(&json)?;
    let ours = Version::ours();
    let newer_minor = version.minor > ours.minor;
    validate(&json, newer_minor)?;
    let mut ignored = Vec::new();
    if newer_minor {
        let schema = schema_value();
        prune_unknown(schema, schema, &mut json, "", &mut ignored);
    }
    let receipt = if ignored.is_empty() {
        // From the bytes, so that a mismatch names a line and column.
        serde_json::from_slice(bytes).map_err(ReceiptError::Types)?
    } else {
        serde_json::from_value(json.clone()).map_err(ReceiptError::Types)?
    };
    Ok((version, receipt, json, ignored))
}

/// The receipt's `schema_version`, refused unless its major version is ours.
pub fn check_version(json: &Value) -> Result<Version, ReceiptError> {
    let obj = json.as_object().ok_or(ReceiptError::NotAnObject)?;
    let v = obj.get("schema_version").ok_or(ReceiptError::NoVersion)?;
    let s = v.as_str().ok_or_else(|| ReceiptError::BadVersion(v.to_string()))?;
    let version = Version::parse(s).ok_or_else(|| ReceiptError::BadVersion(format!("{s:?}")))?;
    if version.major != SCHEMA_MAJOR {
        return Err(ReceiptError::UnknownMajor { found: version });
    }
    Ok(version)
}

/// Validates `json` against the schema (`relaxed`: unknown keys allowed everywhere).
/// Reports the first error by its dotted path, and how many more there are.
pub fn validate(json: &Value, relaxed: bool) -> Result<(), ReceiptError> {
    let validator = if relaxed { &validators().1 } else { &validators().0 };
    let mut errors = validator.iter_errors(json);
    let Some(first) = errors.next() else { return Ok(()) };
    let path = dotted_path(first.instance_path().as_str());
    let message = shorten(&first.to_string());
    Err(ReceiptError::Schema { path, message, more: errors.count() })
}

/// The schema as JSON.
pub fn schema_value() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| serde_json::from_str(SCHEMA_TEXT).expect("the committed schema is JSON"))
}

/// (strict, relaxed) validators, compiled once. A schema that does not compile is a bug of
/// this build (a unit test compiles both), hence the `expect`.
fn validators() -> &'static (jsonschema::Validator, jsonschema::Validator) {
    static VALIDATORS: OnceLock<(jsonschema::Validator, jsonschema::Validator)> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let strict = schema_value();
        let mut relaxed = strict.clone();
        lift_additional_properties(&mut relaxed);
        let build = |s: &Value| {
            jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(s)
                .expect("the committed receipt schema compiles")
        };
        (build(strict), build(&relaxed))
    })
}

/// Removes every `"additionalProperties": false` (the schema for newer minor versions).
pub fn lift_additional_properties(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(lift_additional_properties);
        }
        Value::Array(items) => items.iter_mut().for_each(lift_additional_properties),
        _ => {}
    }
}

/// Drops from `value` every key that `node` (a part of the schema `root`) forbids, recording
/// its dotted path. Assumes `value` already passed the relaxed schema.
fn prune_unknown(root: &Value, node: &Value, value: &mut Value, path: &str, removed: &mut Vec<String>) {
    // Nullable structs are `{"type": ["object", "null"], "$ref": ...}`: the definition says it all.
    let node = resolve(root, node);
    match value {
        Value::Object(map) => {
            let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
            if node.get("additionalProperties") == Some(&Value::Bool(false)) {
                let unknown: Vec<String> = map.keys().filter(|k| !props.contains_key(*k)).cloned().collect();
                for k in unknown {
                    map.remove(&k);
                    removed.push(join_key(path, &k));
                }
            }
            for (k, v) in map.iter_mut() {
                if let Some(sub) = props.get(k) {
                    prune_unknown(root, sub, v, &join_key(path, k), removed);
                }
            }
        }
        Value::Array(items) => {
            let Some(sub) = node.get("items") else { return };
            for (i, v) in items.iter_mut().enumerate() {
                prune_unknown(root, sub, v, &format!("{path}[{i}]"), removed);
            }
        }
        _ => {}
    }
}

/// Follows `$ref: "#/$defs/NAME"` links (the only kind the receipt schema uses).
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix("#/$defs/").and_then(|name| root.get("$defs")?.get(name)) {
            Some(target) => node = target,
            None => break,
        }
    }
    node
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `/cases/0/summary/cosine_min` → `cases[0].summary.cosine_min`; the root is `(top level)`.
pub fn dotted_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out = join_key(&out, &seg);
        }
    }
    if out.is_empty() {
        "(top level)".to_string()
    } else {
        out
    }
}

fn shorten(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= MAX_MESSAGE_CHARS {
        return one_line;
    }
    let cut: String = one_line.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_validators_compile() {
        let (strict, relaxed) = validators();
        assert!(!strict.is_valid(&json!({})));
        assert!(!relaxed.is_valid(&json!({})));
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(Version::parse("1.2.3"), Some(Version { major: 1, minor: 2, patch: 3 }));
        for bad in ["1.2", "1.2.3.4", "1..3", "v1.2.3", "1.2.3-rc1", "1.2.+3", "", "1.2.x"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert_eq!(Version::ours().major, SCHEMA_MAJOR);
    }

    #[test]
    fn version_checks() {
        assert!(matches!(check_version(&json!([])), Err(ReceiptError::NotAnObject)));
        assert!(matches!(check_version(&json!({})), Err(ReceiptError::NoVersion)));
        assert!(matches!(check_version(&json!({"schema_version": 1})), Err(ReceiptError::BadVersion(_))));
        assert!(matches!(
            check_version(&json!({"schema_version": "2.0.0"})),
            Err(ReceiptError::UnknownMajor { found: Version { major: 2, .. } })
        ));
        assert_eq!(check_version(&json!({"schema_version": "1.7.0"})).unwrap().minor, 7);
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(dotted_path(""), "(top level)");
        assert_eq!(dotted_path("/summary/cosine_min"), "summary.cosine_min");
        assert_eq!(dotted_path("/cases/0/positions/12/kl"), "cases[0].positions[12].kl");
        assert_eq!(dotted_path("/model/hyperparameters/a~1b"), "model.hyperparameters.a/b");
    }

    #[test]
    fn lifting_removes_only_false_additional_properties() {
        let mut s = json!({"additionalProperties": false, "properties": {"a": {"additionalProperties": true}},
                           "$defs": {"X": {"additionalProperties": false}}});
        lift_additional_properties(&mut s);
        assert_eq!(s, json!({"properties": {"a": {"additionalProperties": true}}, "$defs": {"X": {}}}));
    }

    #[test]
    fn pruning_follows_refs_and_arrays() {
        let schema = json!({
            "type": "object", "additionalProperties": false,
            "properties": {"a": {"$ref": "#/$defs/A"}, "list": {"type": "array", "items": {"$ref": "#/$defs/A"}},
                           "maybe": {"type": ["object", "null"], "$ref": "#/$defs/A"},
                           "free": {"type": "object"}},
            "$defs": {"A": {"type": "object", "additionalProperties": false, "properties": {"x": {}}}}
        });
        let mut v = json!({"a": {"x": 1, "y": 2}, "list": [{"x": 1}, {"x": 2, "z": 3}],
                           "maybe": {"x": 0, "w": 1}, "free": {"anything": 1}, "new": true});
        let mut removed = Vec::new();
        prune_unknown(&schema, &schema, &mut v, "", &mut removed);
        removed.sort();
        assert_eq!(removed, ["a.y", "list[1].z", "maybe.w", "new"]);
        assert_eq!(
            v,
            json!({"a": {"x": 1}, "list": [{"x": 1}, {"x": 2}], "maybe": {"x": 0}, "free": {"anything": 1}})
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(shorten(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(shorten("a\nb"), "a b");
    }
}
