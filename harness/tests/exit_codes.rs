//! docs/exit-codes.md lists every exit code of `harness` with its number, and nothing else.

use harness::exit::Exit;

/// `(code, name)` of every row of the table: lines `| 130 | `Interrupted` | ... |`.
fn documented() -> Vec<(u8, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/exit-codes.md");
    let text = std::fs::read_to_string(path).expect("docs/exit-codes.md");
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').map(str::trim).collect();
            let code = cells.first()?.parse::<u8>().ok()?;
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code, name.to_string()))
        })
        .collect()
}

#[test]
fn the_table_lists_every_exit_code_with_its_number() {
    let rows = documented();
    let expected: Vec<(u8, String)> = Exit::ALL.iter().map(|e| (e.code(), format!("{e:?}"))).collect();
    for e in &expected {
        assert!(rows.contains(e), "docs/exit-codes.md has no row `| {} | `{}` |`", e.0, e.1);
    }
    for r in &rows {
        assert!(expected.contains(r), "docs/exit-codes.md lists {r:?}, which Exit::ALL does not have");
    }
    assert_eq!(rows.len(), expected.len(), "a code is listed twice: {rows:?}");
}

#[test]
fn codes_are_distinct() {
    let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), Exit::ALL.len());
}
