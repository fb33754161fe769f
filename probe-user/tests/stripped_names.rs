//! Names for stripped binaries, checked on Debian's own nginx, its Lua module and LuaJIT (all
//! stripped): every function a module table points at must be an exported function's start or a
//! function start of `.eh_frame` outside every exported function; generic handlers must match the
//! exported symbols; LuaJIT's interpreter must be found. Needs the stand-in's packages (`cargo
//! xtask test` installs them), not root.

use std::{collections::HashMap, path::Path};

use object::{Object, ObjectSymbol, SymbolKind};
use reloadscope::flame::stripped::{Fallback, LUAJIT_VM};

const NGINX: &str = "/usr/sbin/nginx";
const LUA_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_lua_module.so";
const LUAJIT: &str = "/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2";

/// Exported functions: name → (start, end).
fn exported(path: &str) -> HashMap<String, (u64, u64)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (cargo xtask test installs it)"));
    let obj = object::File::parse(&*data).unwrap();
    assert!(obj.symbols().next().is_none(), "{path} is expected stripped (no .symtab)");
    obj.dynamic_symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .map(|s| (s.name().unwrap().to_owned(), (s.address(), s.address() + s.size())))
        .collect()
}

/// Checks every table target of `path` against its exported functions; returns the fallback and
/// the slot → address map.
fn consistent_tables(path: &str) -> (Fallback, HashMap<String, u64>) {
    let syms = exported(path);
    let f = Fallback::load(Path::new(path));
    let mut slots = HashMap::new();
    for (&addr, names) in f.tables() {
        let starts_exported = syms.values().any(|&(s, _)| s == addr);
        let inside_exported = syms.values().any(|&(s, e)| s < addr && addr < e);
        assert!(!inside_exported, "{names:?} → {addr:#x} lands inside an exported function");
        assert!(
            starts_exported || f.function_start(addr) == Some(addr),
            "{names:?} → {addr:#x} is not a function start"
        );
        slots.extend(names.iter().map(|n| (n.clone(), addr)));
    }
    (f, slots)
}

#[test]
#[ignore = "needs Debian's nginx and LuaJIT (cargo xtask test installs them)"]
fn nginx_module_tables_point_at_functions() {
    let syms = exported(NGINX);
    let (f, slots) = consistent_tables(NGINX);
    assert!(slots.len() > 500, "only {} slots in nginx's module tables", slots.len());
    // Generic directive handlers are exported: the tables must agree with the symbol table.
    for (slot, func) in [
        ("ngx_http_core_module.directive.sendfile", "ngx_conf_set_flag_slot"),
        ("ngx_core_module.directive.timer_resolution", "ngx_conf_set_msec_slot"),
        ("ngx_http_core_module.directive.client_max_body_size", "ngx_conf_set_off_slot"),
        ("ngx_http_core_module.directive.default_type", "ngx_conf_set_str_slot"),
    ] {
        let at = slots.get(slot).unwrap_or_else(|| panic!("no slot {slot}"));
        assert_eq!(Some(at), syms.get(func).map(|(s, _)| s), "{slot} should be {func}");
    }
    // The epoll module's hooks are static: named by their slots, each at a function start.
    let pe = slots["ngx_epoll_module.process_events"];
    assert!(!syms.values().any(|&(s, e)| (s..e).contains(&pe)), "process_events is static");
    assert_eq!(f.name(pe + 0x20).as_deref(), Some("ngx_epoll_module.process_events"));
    assert_eq!(
        f.name(slots["ngx_epoll_module.add"]).as_deref(),
        Some("ngx_epoll_module.add/ngx_epoll_module.enable")
    );
    // A static function no table points at still folds by its start.
    let unnamed = (0..0x100000u64).step_by(0x40).find(|&a| {
        f.function_start(a)
            .is_some_and(|s| s != a && !f.tables().contains_key(&s) && !syms.values().any(|&(x, _)| x == s))
    });
    let a = unnamed.expect("some unnamed static function");
    assert_eq!(f.name(a), Some(format!("fn@{:#x}", f.function_start(a).unwrap())));
}

#[test]
#[ignore = "needs Debian's nginx and LuaJIT (cargo xtask test installs them)"]
fn lua_module_tables_point_at_functions() {
    let (_, slots) = consistent_tables(LUA_MODULE);
    assert!(slots.keys().any(|s| s == "ngx_http_lua_module.directive.content_by_lua_block"), "{slots:?}");
    // Hooks the module exports are relocated against its own symbols (R_X86_64_64).
    let syms = exported(LUA_MODULE);
    assert_eq!(
        Some(&slots["ngx_http_lua_module.init_process"]),
        syms.get("ngx_http_lua_init_worker").map(|(s, _)| s)
    );
}

#[test]
#[ignore = "needs Debian's nginx and LuaJIT (cargo xtask test installs them)"]
fn luajit_interpreter_is_one_fde_outside_every_exported_function() {
    let syms = exported(LUAJIT);
    let f = Fallback::load(Path::new(LUAJIT));
    let vm: Vec<u64> = (0..0x100000u64).filter(|&a| f.name(a).as_deref() == Some(LUAJIT_VM)).collect();
    let (lo, hi) = (*vm.first().expect("the interpreter"), *vm.last().unwrap());
    assert_eq!(vm.len() as u64, hi - lo + 1, "one contiguous range");
    assert!(hi - lo > 8 * 1024, "LuaJIT's VM is large: {} bytes", hi - lo + 1);
    assert!(!syms.values().any(|&(s, e)| s <= hi && lo < e), "no exported function overlaps the VM");
    // The exported API stays named by the symbol table, outside the VM.
    let (s, _) = syms["lua_resume"];
    assert!(!(lo..=hi).contains(&s));
}
