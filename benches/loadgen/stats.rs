//! Measurement helpers: the generator's clock, HDR histograms, per-publisher sequence
//! tracking (lost and duplicated messages), and CPU time / RSS read from /proc.

use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the generator started: the timestamps carried in payloads.
pub fn now_us() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The instant `us` microseconds after the generator started.
pub fn instant_at(us: u64) -> Instant {
    *BASE.get_or_init(Instant::now) + Duration::from_micros(us)
}

/// Latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// Which sequence numbers of one publisher (on one channel) a subscriber has seen.
#[derive(Default)]
pub struct Seen {
    words: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
}

impl Seen {
    pub fn record(&mut self, seq: u64) {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1 + word / 2, 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
    }
}

/// Linux's USER_HZ: /proc reports CPU times in these ticks (100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident set size of a process in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU seconds of several processes over an interval.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<Option<f64>>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self { pids: pids.to_vec(), start: pids.iter().map(|&p| cpu_seconds(Some(p))).collect() }
    }

    /// Seconds used since `start`, summed; `None` when no pid was given or one vanished.
    pub fn elapsed(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        let mut total = 0.0;
        for (pid, start) in self.pids.iter().zip(&self.start) {
            total += cpu_seconds(Some(*pid))? - (*start)?;
        }
        Some(total)
    }
}
