//! Progress for long work: a bar with rate and ETA on a terminal, a log line every few seconds
//! otherwise (CI, systemd), so nobody watches a silent process.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    label: String,
    total: u64,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// `total` is in `unit`s (`"bytes"` or a word such as `"rows"`); `items` counts what the user
    /// cares about (rows, events) and is reported with its rate.
    pub fn new(label: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = if unit == "bytes" {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}"
            } else {
                "{prefix} [{bar:30}] {human_pos}/{human_len} {unit} {msg} ETA {eta}"
            };
            let style = ProgressStyle::with_template(&template.replace("{unit}", unit))
                .expect("valid progress template")
                .progress_chars("=> ");
            let bar = ProgressBar::new(total).with_style(style).with_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress { label, total, unit, bar, started: now, last_log: now }
    }

    /// Reports `position` of `total` and `items` done so far.
    pub fn update(&mut self, position: u64, items: u64, item_name: &str) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = items as f64 / elapsed;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            bar.set_message(format!("{} {item_name} ({}/s)", human(items as f64), human(rate)));
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let done = position as f64 / self.total.max(1) as f64;
            let eta = if done > 0.0 { elapsed * (1.0 - done) / done } else { f64::NAN };
            tracing::info!(
                "{}: {:.1}% of {} {}, {} {item_name} at {}/s, ETA {:.0}s",
                self.label,
                100.0 * done,
                human(self.total as f64),
                self.unit,
                human(items as f64),
                human(rate),
                eta
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1234567.0` → `1.23 M`.
pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// CPU time (user and system) the calling thread has used so far, from `/proc` (Linux only; `None`
/// elsewhere). Per-thread figures show where a run's cores went: wall times of threads that share
/// two cores do not.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: `state` first,
    // so utime and stime (fields 14 and 15 of the line) are the 12th and 13th.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // The kernel reports clock ticks of USER_HZ, 100 per second on every Linux architecture.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_time_grows_with_work() {
        let Some(before) = super::thread_cpu_time() else { return }; // not Linux
        let started = std::time::Instant::now();
        let mut x = 1u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = super::thread_cpu_time().expect("readable once");
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
