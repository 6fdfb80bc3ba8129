//! Process metrics read from `/proc` (Linux): resident memory, CPU time,
//! open descriptors, start time.

use std::time::{SystemTime, UNIX_EPOCH};

/// What one scrape reads about this process; 0 where `/proc` cannot tell.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct ProcessSample {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    let v = nix::unistd::sysconf(var).ok()??;
    u64::try_from(v).ok().filter(|v| *v > 0)
}

fn page_size() -> u64 {
    sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096)
}

fn clock_ticks() -> u64 {
    sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100)
}

/// Resident set size from `/proc/self/statm` (second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

/// The fields of `/proc/self/stat` after the command name, so that index 0
/// is field 3 (`state`) of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    Some(after.split_whitespace().collect())
}

/// utime + stime (fields 14 and 15) in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let f = stat_fields(stat)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / clock_ticks() as f64)
}

/// Start time after boot (field 22), in clock ticks.
fn start_ticks(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    // read_dir itself holds one descriptor while counting.
    Some((n as u64).saturating_sub(1))
}

pub(crate) fn sample() -> ProcessSample {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    ProcessSample {
        resident_bytes: resident_bytes().unwrap_or(0),
        cpu_seconds: cpu_seconds(&stat).unwrap_or(0.0),
        open_fds: open_fds().unwrap_or(0),
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The resident memory of this process, bytes (0 when `/proc` does not
/// tell).
pub(crate) fn resident() -> u64 {
    resident_bytes().unwrap_or(0)
}

/// The process's start time in seconds since the Unix epoch (boot time +
/// start ticks), or now when `/proc` does not tell.
pub(crate) fn start_time_seconds() -> f64 {
    let from_proc = || {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = start_ticks(&stat)?;
        let btime = boot_time()?;
        Some(btime as f64 + ticks as f64 / clock_ticks() as f64)
    };
    from_proc().unwrap_or_else(unix_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        // Fields 3.. of a made-up stat line whose comm holds ") (".
        let mut line = String::from("4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 ");
        line.push_str("250 50 0 0 20 0 8 0 123456 1000000 500 18446744073709551615");
        assert_eq!(start_ticks(&line), Some(123456));
        let cpu = cpu_seconds(&line).unwrap_or(-1.0);
        assert!((cpu - 300.0 / clock_ticks() as f64).abs() < 1e-9, "{cpu}");
    }

    #[test]
    fn this_process_is_visible() {
        let s = sample();
        assert!(s.resident_bytes > 0);
        assert!(s.open_fds > 0);
        let start = start_time_seconds();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        assert!(
            start > 1.0e9 && start <= now + 2.0,
            "start {start} now {now}"
        );
    }
}
