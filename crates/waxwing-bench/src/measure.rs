//! What the benchmark reads from /proc, and the result record.

use std::fmt::Write as _;
use std::time::Instant;

/// Clock ticks per second for /proc/*/stat times. 100 on every Linux
/// configuration we run on (USER_HZ); reading it needs libc.
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of a process (all threads), or `None` if it is
/// gone. A comma-separated list of PIDs (the nodes of a cluster) gives the
/// sum; `None` if any of them is gone.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    pid.split(',').map(cpu_seconds_of).sum()
}

fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size in KiB (VmRSS); summed over a comma-separated list.
pub fn rss_kb(pid: &str) -> Option<u64> {
    pid.split(',').map(rss_kb_of).sum()
}

fn rss_kb_of(pid: &str) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// Peak resident set size in KiB since the process started (VmHWM);
/// summed over a comma-separated list.
pub fn rss_peak_kb(pid: &str) -> Option<u64> {
    pid.split(',').map(|p| status_kb(p, "VmHWM:")).sum()
}

fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Online CPUs of the machine.
pub fn machine_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

/// CPUs this process may run on (taskset narrows it).
pub fn my_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU usage of the server and of this generator over a window.
pub struct Window {
    server_pid: Option<String>,
    t0: Instant,
    server0: Option<f64>,
    gen0: f64,
}

/// What a window measured.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub wall: f64,
    pub server_cpu: Option<f64>,
    pub gen_cpu: f64,
}

impl Window {
    pub fn start(server_pid: Option<&str>) -> Self {
        Window {
            server_pid: server_pid.map(str::to_string),
            t0: Instant::now(),
            server0: server_pid.and_then(cpu_seconds),
            gen0: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    pub fn stop(&self) -> Usage {
        let server1 = self.server_pid.as_deref().and_then(cpu_seconds);
        Usage {
            wall: self.t0.elapsed().as_secs_f64(),
            server_cpu: match (self.server0, server1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            gen_cpu: cpu_seconds("self").unwrap_or(0.0) - self.gen0,
        }
    }
}

/// One scenario's outcome: a flat JSON object, one per line.
#[derive(Default)]
pub struct Record {
    fields: Vec<(String, String)>,
}

impl Record {
    pub fn new(scenario: &str) -> Self {
        let mut r = Record::default();
        r.str("scenario", scenario);
        r
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', " ");
        self.raw(k, format!("\"{escaped}\""))
    }

    pub fn num(&mut self, k: &str, v: f64) -> &mut Self {
        if v.is_finite() {
            self.raw(k, format!("{}", (v * 1000.0).round() / 1000.0));
        }
        self
    }

    /// CPU figures and the bottleneck verdict for a window in which `work`
    /// units (logins, messages…) were done.
    pub fn usage(&mut self, u: &Usage, work: f64) -> &mut Self {
        self.num("wall_s", u.wall);
        self.num("gen_cpu_s", u.gen_cpu);
        let gen_share = u.gen_cpu / u.wall.max(1e-9);
        self.num("gen_cpu_share", gen_share);
        if let Some(s) = u.server_cpu {
            self.num("server_cpu_s", s);
            self.num("server_cpu_share", s / u.wall.max(1e-9));
            if s > 0.0 {
                self.num("per_server_cpu_s", work / s);
            }
            // The same figure the other way round: what one unit costs the
            // server, which is what stays flat (or not) as a room grows.
            if work > 0.0 {
                self.num("server_cpu_us_per", s * 1e6 / work);
            }
        }
        let server_share = u.server_cpu.unwrap_or(0.0) / u.wall.max(1e-9);
        let mine = my_cpus() as f64;
        let all = machine_cpus() as f64;
        // The generator is the bottleneck when it saturates the cores it may
        // use, or when the machine is saturated and it uses more than the server.
        let bound = gen_share >= 0.9 * mine
            || (gen_share + server_share >= 0.9 * all && gen_share > server_share);
        self.str("gen_bound", if bound { "yes" } else { "no" });
        self
    }

    /// Adds an already-encoded JSON value.
    pub fn raw(&mut self, k: &str, v: String) -> &mut Self {
        self.fields.retain(|(key, _)| key != k);
        self.fields.push((k.into(), v));
        self
    }

    pub fn into_fields(self) -> Vec<(String, String)> {
        self.fields
    }

    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{k}\":{v}");
        }
        s.push('}');
        s
    }
}

/// Latency percentiles in milliseconds from microsecond samples.
pub fn percentiles(mut us: Vec<u32>) -> Option<(f64, f64, f64)> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(us[i]) / 1000.0
    };
    Some((at(0.5), at(0.99), f64::from(*us.last().unwrap()) / 1000.0))
}

/// Parses one flat JSON object as written by [`Record::to_json`].
pub fn parse_flat_json(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = line.trim().trim_start_matches('{').trim_end_matches('}');
    let chars: Vec<char> = b.chars().collect();
    let mut i = 0;
    let read_str = |i: &mut usize| -> String {
        let mut s = String::new();
        *i += 1; // opening quote
        while *i < chars.len() && chars[*i] != '"' {
            if chars[*i] == '\\' && *i + 1 < chars.len() {
                *i += 1;
            }
            s.push(chars[*i]);
            *i += 1;
        }
        *i += 1;
        s
    };
    while i < chars.len() {
        while i < chars.len() && (chars[i] == ',' || chars[i].is_whitespace()) {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let k = read_str(&mut i);
        while i < chars.len() && (chars[i] == ':' || chars[i].is_whitespace()) {
            i += 1;
        }
        let v = if i < chars.len() && chars[i] == '"' {
            read_str(&mut i)
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' {
                i += 1;
            }
            chars[start..i].iter().collect()
        };
        out.push((k, v));
    }
    out
}
