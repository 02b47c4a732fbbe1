//! What every Berth binary does the same way: logging, the clock, and
//! waiting for the signal to stop.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Logs to stderr, filtered by `BERTH_LOG` (default `info`), in colour only
/// on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Runs a component (given a receiver that turns true when it must stop)
/// until it ends by itself or a signal arrives; then tells it to stop and
/// waits up to `grace` for it to finish. Errors are printed as
/// `NAME: error: …`.
pub async fn run_until_signal<F, Fut, E>(
    name: &str,
    grace: std::time::Duration,
    component: F,
) -> std::process::ExitCode
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(component(stopped));
    let exit = |result: Result<Result<(), E>, tokio::task::JoinError>| match result {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: error: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    tokio::select! {
        result = &mut task => return exit(result),
        signal = shutdown_signal() => {
            if let Err(e) = signal {
                eprintln!("{name}: error: {e}");
            }
        }
    }
    tracing::info!("shutting down");
    stop.send_replace(true);
    match tokio::time::timeout(grace, task).await {
        Ok(result) => exit(result),
        Err(_) => std::process::ExitCode::SUCCESS,
    }
}

/// The multi-threaded tokio runtime of a server (or of a load generator).
///
/// Built with `--cfg tokio_unstable` (the workspace's `.cargo/config.toml`),
/// its workers have no LIFO slot. With the slot, a request task that
/// finishes wakes its connection's task into the slot, which then runs at
/// once and writes that one response to the socket: a `writev` (and, on
/// loopback, the receiver's whole TCP receive path) per request. Without
/// it, the connection task runs after the other requests answered in the
/// same turn and writes all their responses at once. Measured with
/// `berth-bench cluster` in alternating runs: 5% more writes per second at
/// 5% less server CPU per write.
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}
