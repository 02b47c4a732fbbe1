//! CPU time of processes, from `/proc/PID/stat`: how much work an operation
//! costs, a figure that moves far less from run to run than throughput on a
//! shared (virtual) machine, where other tenants take cores at will.

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on
/// every Linux architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds used so far by each of `pids` (a process
/// that is gone counts as zero), and by this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub servers: f64,
    pub client: f64,
}

impl Usage {
    pub fn now(pids: &[u32]) -> Usage {
        Usage {
            servers: pids.iter().map(|pid| seconds(&pid.to_string())).sum(),
            client: seconds("self"),
        }
    }

    /// CPU seconds used from `earlier` to `self`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            servers: self.servers - earlier.servers,
            client: self.client - earlier.client,
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.servers += other.servers;
        self.client += other.client;
    }

    /// In CPU microseconds per operation, for `ops` operations.
    pub fn per_op(&self, ops: usize) -> Usage {
        let per = |seconds: f64| seconds * 1e6 / ops.max(1) as f64;
        Usage {
            servers: per(self.servers),
            client: per(self.client),
        }
    }
}

fn seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are the 14th and 15th fields of the whole line.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_SECOND,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu() {
        let before = Usage::now(&[]);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = Usage::now(&[]).since(&before).per_op(1);
        assert!(used.client > 50_000.0, "{used:?}");
        assert_eq!(used.servers, 0.0);
    }
}
