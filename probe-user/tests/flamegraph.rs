//! Root integration test of `reloadscope flamegraph`: a CPU burner spinning in a → b → c, unwound from
//! the copied stacks with `.eh_frame` (framehop; the frame-pointer stack id is not used).

mod common;

use common::*;

/// The function name of a folded frame `func [module]`, without the module and any crate path.
fn short(frame: &str) -> &str {
    let func = frame.split(" [").next().unwrap_or(frame);
    func.rsplit("::").next().unwrap_or(func)
}

#[test]
#[ignore = "root: loads eBPF programs"]
fn burn_heaviest_stack_is_a_b_c() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace");
    let mut burn = Running::start(std::process::Command::new(fixture("burn")).arg("4"));
    let (pid, _) = ready_ids(&burn.wait_for("ready"));
    let rec = Recording::start(&[pid], "2s", &out, &["--sample-hz", "99"]);
    rec.finish();
    let res = reloadscope().arg("flamegraph").arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success());
    let folded_path = std::fs::read_dir(out.join("flamegraphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy().contains(&format!("pid{pid}-"))
                && p.extension().is_some_and(|e| e == "folded")
        })
        .expect("a folded file for the burner");
    assert!(folded_path.with_extension("svg").exists());
    let text = std::fs::read_to_string(&folded_path).unwrap();
    let (stack, count) = text
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(s, c)| (s, c.parse::<u64>().unwrap())))
        .max_by_key(|&(_, c)| c)
        .expect("samples");
    let names: Vec<&str> = stack.split(';').map(short).collect();
    eprintln!("heaviest ({count}): {stack}");
    assert!(names.windows(3).any(|w| w == ["a", "b", "c"]), "heaviest stack {stack}");
    // a → b → c sits under main: unwinding went past the leaf without frame pointers.
    let ia = names.iter().position(|n| *n == "a").unwrap();
    assert!(names[..ia].contains(&"main"), "{stack}");
}
