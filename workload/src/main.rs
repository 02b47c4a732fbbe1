//! `berth-workload`: the program inside Berth's test image.
//!
//! Every behaviour the agent must handle, on demand from its arguments:
//!
//! ```text
//! berth-workload [--print TEXT]… [--tick DURATION] [--serve PORT]
//!                [--healthy-for DURATION] [--healthy-file PATH]
//!                [--burn-cpu THREADS] [--alloc MIB] [--sleep DURATION] [--exit CODE]
//! ```
//!
//! - `--print` writes a line to stdout at start; `--tick` one line per period.
//! - `--serve` answers HTTP on the port: `GET /health` is 200 while healthy
//!   (for `--healthy-for`, forever by default), 500 after; any other path 200.
//! - `--healthy-file` creates PATH, so an exec probe can `check PATH`.
//! - `--burn-cpu` spins that many threads; `--alloc` allocates and touches
//!   that many MiB (over a memory limit, the kernel OOM-kills the process).
//! - `--sleep` then `--exit`: ends after the sleep with the code (default 0).
//!   Without `--sleep`, it ends at once unless it serves, ticks or burns.
//! - `berth-workload check PATH` exits 0 if PATH exists, 1 if not (an exec
//!   health probe in an image that has no shell).
//!
//! SIGTERM ends it at once with code 143, as a shell would: the container
//! runs it as PID 1, which the kernel does not kill for signals it ignores.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Args {
    print: Vec<String>,
    tick: Option<Duration>,
    serve: Option<u16>,
    healthy_for: Option<Duration>,
    healthy_file: Option<String>,
    burn_cpu: usize,
    alloc_mib: usize,
    sleep: Option<Duration>,
    exit: i32,
}

/// `500ms`, `2s`, `1m`, or plain seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 2s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m)")),
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: {text:?} is not a number"))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--print" => args.print.push(value()?),
            "--tick" => args.tick = Some(duration(&value()?)?),
            "--serve" => args.serve = Some(number(&flag, &value()?)?),
            "--healthy-for" => args.healthy_for = Some(duration(&value()?)?),
            "--healthy-file" => args.healthy_file = Some(value()?),
            "--burn-cpu" => args.burn_cpu = number(&flag, &value()?)?,
            "--alloc" => args.alloc_mib = number(&flag, &value()?)?,
            "--sleep" => args.sleep = Some(duration(&value()?)?),
            "--exit" => args.exit = number(&flag, &value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("check") {
        let exists = argv.nth(1).is_some_and(|p| std::fs::metadata(p).is_ok());
        std::process::exit(if exists { 0 } else { 1 });
    }
    let args = match parse(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("berth-workload: {e}");
            std::process::exit(2);
        }
    };
    exit_on_sigterm();
    for line in &args.print {
        println!("{line}");
    }
    if let Some(path) = &args.healthy_file
        && let Err(e) = std::fs::write(path, b"ok")
    {
        eprintln!("berth-workload: cannot create {path}: {e}");
    }
    let started = Instant::now();
    if let Some(port) = args.serve {
        let healthy_for = args.healthy_for;
        match TcpListener::bind(("0.0.0.0", port)) {
            Ok(listener) => {
                std::thread::spawn(move || serve(listener, started, healthy_for));
            }
            Err(e) => {
                eprintln!("berth-workload: cannot listen on port {port}: {e}");
                std::process::exit(2);
            }
        }
    }
    for _ in 0..args.burn_cpu {
        std::thread::spawn(|| {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }
    // Held until the process ends; touching every page makes it resident.
    let mut held: Vec<Vec<u8>> = Vec::new();
    for mib in 0..args.alloc_mib {
        held.push(vec![1u8; 1 << 20]);
        if mib % 64 == 63 {
            println!("allocated {} MiB", mib + 1);
        }
    }
    if args.alloc_mib > 0 {
        println!("allocated {} MiB", held.len());
    }
    let _ = std::io::stdout().flush();

    let runs_forever = args.serve.is_some() || args.tick.is_some() || args.burn_cpu > 0;
    let deadline = match args.sleep {
        Some(d) => Some(started + d),
        None if runs_forever => None,
        None => Some(started),
    };
    let mut ticks = 0u64;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let until_deadline = deadline.map_or(Duration::from_secs(3600), |d| d - now);
        match args.tick {
            Some(period) => {
                std::thread::sleep(period.min(until_deadline));
                ticks += 1;
                println!("tick {ticks}");
                let _ = std::io::stdout().flush();
            }
            None => std::thread::sleep(until_deadline),
        }
    }
    drop(held);
    std::process::exit(args.exit);
}

/// A SIGTERM ends the process with 128 + 15.
fn exit_on_sigterm() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    println!("signal {signal}: exiting");
                    let _ = std::io::stdout().flush();
                    std::process::exit(128 + signal);
                }
            });
        }
        Err(e) => eprintln!("berth-workload: cannot handle SIGTERM: {e}"),
    }
}

/// Answers each connection with one HTTP response.
fn serve(listener: TcpListener, started: Instant, healthy_for: Option<Duration>) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let healthy = healthy_for.is_none_or(|d| started.elapsed() < d);
            let _ = answer(stream, healthy);
        });
    }
}

fn answer(mut stream: TcpStream, healthy: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (code, body) = match path {
        "/health" if healthy => ("200 OK", "healthy\n"),
        "/health" => ("500 Internal Server Error", "unhealthy\n"),
        _ => ("200 OK", "berth-workload\n"),
    };
    write!(
        stream,
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_flags() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("3"), Ok(Duration::from_secs(3)));
        assert!(duration("3h").is_err());
        let args = parse(
            ["--sleep", "2s", "--exit", "3", "--print", "hi"]
                .into_iter()
                .map(String::from),
        )
        .expect("valid");
        assert_eq!(args.sleep, Some(Duration::from_secs(2)));
        assert_eq!(args.exit, 3);
        assert_eq!(args.print, ["hi"]);
        assert!(parse(["--bogus".to_string()].into_iter()).is_err());
    }
}
