//! Health checks: one prober per running container that has a check. It
//! probes every period (HTTP GET, TCP connect, or a command run in the
//! container), each probe bounded by the timeout, and reports the container
//! unhealthy after `failure_threshold` failures in a row. The supervisor
//! then kills the container and its restart policy applies.

use std::time::Duration;

use berth_proto::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::runtime::Engine;

/// Defaults for fields a manifest left at zero.
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_THRESHOLD: u32 = 3;

/// A container's check failed past its threshold.
#[derive(Debug)]
pub struct Unhealthy {
    pub container_id: String,
    pub reason: String,
}

/// Where and how to probe one container.
#[derive(Debug, Clone)]
pub struct Probe {
    pub container_id: String,
    pub ip: Option<String>,
    pub check: pb::HealthCheck,
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// Probes until the container is unhealthy (reported on `unhealthy`) or the
/// task is aborted.
pub async fn run_prober(engine: Engine, probe: Probe, unhealthy: mpsc::Sender<Unhealthy>) {
    let check = &probe.check;
    let period = ms_or(check.period_ms, DEFAULT_PERIOD);
    let timeout = ms_or(check.timeout_ms, DEFAULT_TIMEOUT);
    let threshold = if check.failure_threshold == 0 {
        DEFAULT_THRESHOLD
    } else {
        check.failure_threshold
    };
    tokio::time::sleep(Duration::from_millis(check.initial_delay_ms)).await;
    let mut failures = 0;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = match tokio::time::timeout(timeout, probe_once(&engine, &probe)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(reason) => {
                failures += 1;
                tracing::debug!(container = %probe.container_id, failures, %reason, "health probe failed");
                if failures >= threshold {
                    let reason = format!("health check failed {failures} times in a row: {reason}");
                    let _ = unhealthy
                        .send(Unhealthy {
                            container_id: probe.container_id.clone(),
                            reason,
                        })
                        .await;
                    return;
                }
            }
        }
    }
}

/// One probe: Ok if healthy, the reason if not.
async fn probe_once(engine: &Engine, probe: &Probe) -> Result<(), String> {
    let address = |port: u32| match &probe.ip {
        Some(ip) => Ok(format!("{ip}:{port}")),
        None => Err("the container has no network address".to_string()),
    };
    match &probe.check.probe {
        Some(pb::health_check::Probe::Http(http)) => {
            let address = address(http.port)?;
            let path = if http.path.is_empty() {
                "/"
            } else {
                &http.path
            };
            let code = http_get(&address, path)
                .await
                .map_err(|e| format!("GET {path} on port {}: {e}", http.port))?;
            // As Kubernetes: 200–399 is healthy.
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {path} on port {} answered {code}", http.port))
            }
        }
        Some(pb::health_check::Probe::Tcp(tcp)) => {
            let address = address(tcp.port)?;
            TcpStream::connect(&address)
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to port {}: {e}", tcp.port))
        }
        Some(pb::health_check::Probe::Exec(exec)) => {
            match engine.exec(&probe.container_id, &exec.command).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("{:?} exited with code {code}", exec.command)),
                Err(e) => Err(format!("cannot run {:?}: {e}", exec.command)),
            }
        }
        None => Ok(()),
    }
}

/// The status code of `GET path` (HTTP/1.0, so that the server closes the
/// connection after its answer).
async fn http_get(address: &str, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: berth-agent\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    // The status line is all a probe needs.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    Ok(code)
}
