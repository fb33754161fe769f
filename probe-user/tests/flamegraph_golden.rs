//! Golden test of `reloadscope flamegraph` (no root): a small recorded trace checked in as test data
//! must fold to the checked-in `tests/golden/flame/*.folded`.
//!
//! The trace (`tests/data/flame-golden/trace/`) is 2 s at 99 Hz of `spin` (`spin.c` next to it: no
//! libc, no frame pointers, `_start → outer → middle → inner`), recorded and pruned to its user-mode
//! samples by `tests/data/flame-golden/record.py` (root). The flame stage reads the binaries named in
//! the recorded maps by absolute path, so the test puts the checked-in `spin` back at that path
//! ([`INSTALLED`]) before running.
//!
//! After an intended change of the folded output, write the golden files anew with
//! `RELOADSCOPE_BLESS=1 cargo test -p probe-user --test flamegraph_golden` and review the diff.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `spin` ran when the trace was recorded: the path its maps name.
const INSTALLED: &str = "/tmp/reloadscope-flame-golden/spin";

/// When set, the golden files are written instead of compared (as for the report's golden tests).
const BLESS_VAR: &str = "RELOADSCOPE_BLESS";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flame-golden")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/flame")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Puts the checked-in `spin` at [`INSTALLED`], unless the same bytes are already there. Written
/// under another name and renamed, so a test running at the same time never reads half a file.
fn install_spin() {
    let bytes = fs::read(data_dir().join("spin")).unwrap();
    let dest = Path::new(INSTALLED);
    if fs::read(dest).is_ok_and(|b| b == bytes) {
        return;
    }
    let dir = dest.parent().unwrap();
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let tmp = dir.join(format!(".spin.{}", std::process::id()));
    fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    fs::rename(&tmp, dest).unwrap_or_else(|e| panic!("cannot install {INSTALLED}: {e}"));
}

/// `*.folded` files of `dir` by name, each with its lines sorted.
fn folded_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "folded"))
        .map(|p| {
            let mut lines: Vec<String> = fs::read_to_string(&p).unwrap().lines().map(str::to_owned).collect();
            lines.sort();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, lines.iter().map(|l| format!("{l}\n")).collect())
        })
        .collect();
    files.sort();
    files
}

/// Lines only in `want` (`-`) and only in `got` (`+`), then both texts.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut s = String::new();
    for l in w.iter().filter(|l| !g.contains(l)) {
        s.push_str(&format!("- {l}\n"));
    }
    for l in g.iter().filter(|l| !w.contains(l)) {
        s.push_str(&format!("+ {l}\n"));
    }
    format!("{s}--- golden:\n{want}--- produced:\n{got}")
}

/// The function name of a folded frame `func [module]`.
fn func(frame: &str) -> &str {
    frame.split(" [").next().unwrap_or(frame)
}

#[test]
fn recorded_trace_folds_to_the_golden_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    copy_dir(&data_dir().join("trace"), &trace);
    let maps: String = fs::read_dir(trace.join("maps"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(maps.contains(INSTALLED), "the recorded maps do not name {INSTALLED}:\n{maps}");
    install_spin();

    let res = Command::new(env!("CARGO_BIN_EXE_reloadscope"))
        .arg("flamegraph")
        .arg(&trace)
        // Names come from spin's own symbols: no debug file is looked for on a server.
        .env_remove("DEBUGINFOD_URLS")
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "reloadscope flamegraph failed:\n{out}");
    let produced = folded_files(&trace.join("flamegraphs"));
    assert!(!produced.is_empty(), "no folded file written:\n{out}");
    for (name, _) in &produced {
        common::assert_svg_draws(&trace.join("flamegraphs").join(name));
    }

    // Independent of the golden files: most samples burn in inner, called through the chain.
    let heaviest = produced
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, c)| (s, c.parse::<u64>().unwrap())))
        .max_by_key(|&(_, c)| c)
        .unwrap();
    let names: Vec<&str> = heaviest.0.split(';').map(func).collect();
    assert!(
        names.windows(3).any(|w| w == ["outer", "middle", "inner"]),
        "heaviest stack {heaviest:?} is not outer;middle;inner"
    );

    let golden = golden_dir();
    if std::env::var_os(BLESS_VAR).is_some() {
        fs::create_dir_all(&golden).unwrap();
        for (name, _) in folded_files(&golden) {
            fs::remove_file(golden.join(name)).unwrap();
        }
        for (name, text) in &produced {
            fs::write(golden.join(name), text).unwrap();
        }
        eprintln!("blessed {} folded file(s) in {}", produced.len(), golden.display());
        return;
    }
    let expected = folded_files(&golden);
    let names_of = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names_of(&produced),
        names_of(&expected),
        "folded files differ from {} (re-bless with {BLESS_VAR}=1 if intended)",
        golden.display()
    );
    for ((name, got), (_, want)) in produced.iter().zip(&expected) {
        assert!(
            got == want,
            "{name} differs from the golden file in {} (re-bless with {BLESS_VAR}=1 if intended):\n{}",
            golden.display(),
            diff(want, got)
        );
    }
}
