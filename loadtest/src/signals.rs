//! SIGTERM handling. goose stops gracefully on SIGINT through its own ctrlc handler; this gives
//! SIGTERM the same treatment (the default would kill us before the request log is flushed).

use std::time::Duration;

/// Spawns a task that turns the first SIGTERM into goose's killswitch and exits on the second.
pub fn stop_on_sigterm() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        if term.recv().await.is_none() {
            return;
        }
        eprintln!("loadtest: SIGTERM received, stopping (again to exit at once)");
        // goose clears the killswitch when its run starts, so a SIGTERM that arrives during
        // start-up would be forgotten: keep pulling it until the process ends.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => goose::trigger_killswitch("SIGTERM received"),
                again = term.recv() => {
                    if again.is_some() {
                        // Like goose's second Ctrl-C; the log writer has flushed within 100 ms.
                        std::process::exit(1);
                    }
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Whether the run was cut short: SIGINT, SIGTERM, or a goose `--threshold` that failed.
pub fn stopped_early() -> bool {
    goose::is_killswitch_triggered()
}
