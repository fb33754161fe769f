//! Where the real plugin servers live and how the stand-in starts and queries them (absolute
//! paths only: nginx workers start them with an almost empty environment, as Kong does).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{JsPdk, PyPdk};
use crate::util::workspace_root;

/// The Python plugin's directory (pythonplugin.py, one virtualenv per kong-pdk release).
pub fn python_dir() -> PathBuf {
    workspace_root().join("plugins/python")
}

/// The virtualenv that holds one kong-pdk release (setup creates it).
pub fn python_venv(pdk: PyPdk) -> PathBuf {
    python_dir().join(format!(".venv-{}", pdk.version()))
}

/// The JS plugin's directory (package.json with both kong-pdk releases, plugins/).
pub fn js_dir() -> PathBuf {
    workspace_root().join("plugins/js")
}

fn js_server(pdk: JsPdk) -> PathBuf {
    js_dir().join(format!("node_modules/kong-pdk-{}/bin/kong-js-pluginserver", pdk.version()))
}

/// True when the venv of `pdk` has kong-pdk's server entry point.
pub fn python_ready(pdk: PyPdk) -> bool {
    python_venv(pdk).join("bin/kong-python-pluginserver").exists()
}

/// True when both kong-pdk releases are installed for the JS plugin.
pub fn js_ready() -> bool {
    js_server(JsPdk::V050).exists() && js_server(JsPdk::V060).exists()
}

/// The absolute path of a program found on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// The Go plugin's binary, built with `go build` where Go and its module proxy are reachable;
/// otherwise the "Go plugin skipped: …" line to print. The socket go-pdk opens is named after
/// the executable, so the binary must be called `goplugin`.
pub fn go_plugin() -> std::result::Result<PathBuf, String> {
    let Some(go) = which("go") else {
        return Err("Go plugin skipped: no Go toolchain here (go-pdk v0.7.1 needs Go and its module \
                    proxy); /go answers 503 in the stand-in. The Go plugin runs in kong/Dockerfile."
            .into());
    };
    let out_dir = workspace_root().join("target/goplugin");
    let bin = out_dir.join("goplugin");
    println!("+ {} build -o {} (in plugins/go)", go.display(), bin.display());
    let built = std::process::Command::new(&go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(workspace_root().join("plugins/go"))
        // go.sum is not committed: let the build resolve and record the modules.
        .env("GOFLAGS", "-mod=mod")
        .output();
    match built {
        Ok(out) if out.status.success() => Ok(bin),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("no output").trim().to_string();
            Err(format!("Go plugin skipped: `go build` failed ({last}); /go answers 503 in the stand-in"))
        }
        Err(e) => Err(format!("Go plugin skipped: cannot run {}: {e}", go.display())),
    }
}

/// The stand-in's definition of the Go plugin server (ProtoBuf, found out by its `-dump`).
pub fn go_def(prefix: &Path, bin: &Path) -> Value {
    let p = |path: &Path| path.display().to_string();
    json!({
        "name": "goplugin",
        "socket": p(&prefix.join("goplugin.socket")),
        "log": p(&prefix.join("logs/goplugin.log")),
        "argv": [p(bin), "-kong-prefix", p(prefix)],
        "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        "query_cmd": format!("{} -dump", p(bin)),
    })
}

/// The server definitions for standin.json: name, socket, argv, env, log, query command.
pub fn server_defs(prefix: &Path, js_pdk: JsPdk, py_pdk: PyPdk) -> Result<Vec<Value>> {
    if !python_ready(py_pdk) || !js_ready() {
        bail!(
            "the plugin servers are not installed ({} / {}): run `cargo xtask setup`",
            python_venv(py_pdk).display(),
            js_dir().join("node_modules").display()
        );
    }
    let python = python_venv(py_pdk).join("bin/python3");
    let script = python_dir().join("pythonplugin.py");
    let node = which("node").context("node is not on PATH: run `cargo xtask setup`")?;
    let js = js_server(js_pdk);
    let js_plugins = js_dir().join("plugins");
    let p = |path: &Path| path.display().to_string();
    let env = json!(["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", format!("HOME={}", p(prefix))]);
    Ok(vec![
        json!({
            "name": "pythonplugin",
            "socket": p(&prefix.join("pythonplugin.socket")),
            "log": p(&prefix.join("logs/pythonplugin.log")),
            // Kong's docs' dedicated-server flags: gevent, our socket name.
            "argv": [p(&python), p(&script), "--kong-prefix", p(prefix),
                     "--socket-name", "pythonplugin.socket", "-g"],
            "env": env,
            "query_cmd": format!("{} {} --dump", p(&python), p(&script)),
        }),
        json!({
            "name": "jsplugin",
            "socket": p(&prefix.join("jsplugin.socket")),
            "log": p(&prefix.join("logs/jsplugin.log")),
            "argv": [p(&node), p(&js), "--kong-prefix", p(prefix), "--sock-name", "jsplugin.socket",
                     "--plugins-directory", p(&js_plugins)],
            "env": env,
            "query_cmd": format!("{} {} --plugins-directory {} --dump-all-plugins",
                                 p(&node), p(&js), p(&js_plugins)),
        }),
    ])
}
