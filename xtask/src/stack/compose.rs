//! The compose target: real Kong 2.7.1 (kong/Dockerfile) and reflection by docker compose,
//! from the root docker-compose.yml. Needs a Docker engine and compose (v2 plugin or v1).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Behaviour, UpOptions, http};
use crate::util::{run, succeeds};

/// Kong's proxy as published by docker-compose.yml.
const KONG: &str = super::DEFAULT_LISTEN;

/// `docker compose` when the plugin exists, else `docker-compose`; fails early (and says so)
/// when no Docker engine answers, rather than deep inside compose.
fn compose() -> Result<Command> {
    if !succeeds(Command::new("docker").arg("info")) {
        bail!(
            "--target compose needs a running Docker engine and `docker info` fails here; \
             use the default --target local (the stand-in)"
        );
    }
    if succeeds(Command::new("docker").args(["compose", "version"])) {
        let mut c = Command::new("docker");
        c.arg("compose");
        Ok(c)
    } else if succeeds(Command::new("docker-compose").arg("version")) {
        Ok(Command::new("docker-compose"))
    } else {
        bail!(
            "--target compose needs Docker with compose (`docker compose` or `docker-compose`); \
             neither works here. Use the default --target local (the stand-in)"
        )
    }
}

/// `compose up -d --build` with the options as the compose file's variables.
pub fn up(opts: &UpOptions) -> Result<()> {
    if opts.gateway.behaviour == Behaviour::Fixed {
        bail!("--behaviour fixed exists only in the stand-in: the compose target is Kong 2.7.1 itself");
    }
    if opts.gateway.inject.is_some() {
        bail!("--inject is a test aid of the stand-in: the compose target is Kong 2.7.1 itself");
    }
    if !opts.gateway.worker_init_is_default() {
        bail!("--worker-init models Kong in the stand-in: the compose target is Kong 2.7.1 itself");
    }
    if !opts.addr.are_default() {
        bail!("--listen and --reflection are for the stand-in: compose publishes Kong on {KONG}");
    }
    let cpus = opts.gateway.cpu_limit.unwrap_or(0.15);
    run(compose()?
        .args(["up", "-d", "--build"])
        .env("KONG_CPUS", cpus.to_string())
        .env("KONG_WORKERS", opts.gateway.workers.to_string())
        .env("JS_PDK_VERSION", opts.gateway.js_pdk.version())
        .env("PY_PDK_VERSION", opts.gateway.python_pdk.version()))?;
    wait_healthy(opts)
}

/// `kong reload` inside the container (the reproduction's reload).
pub fn reload() -> Result<()> {
    run(compose()?.args(["exec", "-T", "kong", "kong", "reload"]))
}

/// `compose down`; without compose there is nothing of ours to stop.
pub fn down() -> Result<()> {
    match compose() {
        Ok(mut c) => run(c.args(["down", "--remove-orphans"])),
        Err(_) => Ok(()),
    }
}

/// True when Kong answers on its proxy port.
pub fn is_up() -> bool {
    http::get(KONG, "/python", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
}

/// Waits up to 3 minutes for /python and /js to answer 200 through Kong.
pub fn wait_healthy(_opts: &UpOptions) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ok = ["/python", "/js"]
            .iter()
            .all(|p| http::get(KONG, p, Duration::from_secs(5)).is_ok_and(|r| r.status == 200));
        if ok {
            println!("stack: Kong 2.7.1 answers on http://{KONG} (/go /python /js)");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("Kong did not answer /python and /js within 3 minutes (see `docker compose logs kong`)");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The host pid of Kong's nginx master, found in the kong container the way `--container` finds
/// one (untested here: no Docker engine on our machines).
pub fn master_pid() -> Option<i32> {
    let id = crate::util::output(compose().ok()?.args(["ps", "-q", "kong"]))?;
    match shared::container::find_master(id.trim()) {
        Ok(pid) => i32::try_from(pid).ok(),
        Err(e) => {
            eprintln!("stack: {e}");
            None
        }
    }
}

/// True when a Docker engine answers.
pub fn engine_answers() -> bool {
    crate::util::succeeds(Command::new("docker").arg("info"))
}
