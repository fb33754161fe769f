//! Names of LuaJIT's builtin fast functions (`pcall`, `coroutine.yield`, …). Their ids are
//! numbered when LuaJIT is built, so they come from that build's own `jit/vmdef.lua`
//! (`ffnames`), which LuaJIT installs next to its library (`<prefix>/share/luajit-*/jit/`).

use std::path::Path;

/// `ffnames` of the `vmdef.lua` that belongs to the library at `lib` (a path as the process
/// maps it), read through `root` (the process's `/proc/PID/root`). `None` when there is none,
/// or it does not look like LuaJIT's.
pub fn for_library(root: &Path, lib: &str) -> Option<Vec<String>> {
    // /usr/lib/x86_64-linux-gnu/libluajit…, /usr/local/openresty/luajit/lib/libluajit…
    let prefix = &lib[..lib.rfind("/lib/").or_else(|| lib.rfind("/lib"))?];
    let share = root.join(prefix.trim_start_matches('/')).join("share");
    let mut dirs: Vec<_> = std::fs::read_dir(&share)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("luajit-"))
        .map(|e| e.path().join("jit/vmdef.lua"))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    parse(&std::fs::read_to_string(dirs.pop()?).ok()?)
}

/// The `ffnames` table of a `vmdef.lua`: `[0]="Lua",` then one quoted name per entry.
fn parse(vmdef: &str) -> Option<Vec<String>> {
    let body = vmdef.split("ffnames = {").nth(1)?.split('}').next()?;
    let names: Vec<String> = body
        .split(',')
        .map(|item| item.trim().trim_start_matches("[0]=").trim().trim_matches('"').to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    // Entry 0 is Lua functions and 1 is C functions in every LuaJIT 2.x.
    (names.first().map(String::as_str) == Some("Lua") && names.get(1).map(String::as_str) == Some("C"))
        .then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_table_and_refuses_anything_else() {
        let v = "bcnames = \"ISLT\"\n\nffnames = {\n[0]=\"Lua\",\n\"C\",\n\"assert\",\n\"pcall\",\n}\n";
        assert_eq!(parse(v).unwrap(), ["Lua", "C", "assert", "pcall"]);
        assert!(parse("ffnames = {\n\"x\",\n}").is_none());
        assert!(parse("nothing here").is_none());
    }

    /// Debian's library and its own vmdef.lua (libluajit2-5.1-common): ffid 20 is `pcall`, as
    /// `jit.util.funcinfo(pcall).ffid` says on this build.
    #[test]
    fn debians_build_names_pcall() {
        let names = for_library(Path::new("/"), "/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2.1.0")
            .expect("vmdef.lua of libluajit2 (cargo xtask setup installs it)");
        assert_eq!(names[20], "pcall");
    }
}
