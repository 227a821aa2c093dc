//! Text for people: ages, durations, progress cells and aligned tables.
//! Pure functions of their inputs (the clock is passed in).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rackcast_engine::sched::api::{Millis, Progress};

use crate::cmd::util::human_bytes;

/// The wall clock in Unix ms (the one place the CLI reads it for display).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// `12s ago`, `4m12s ago`, `3h05m ago`, `2d3h ago`; `never` for 0.
pub fn format_age(now: Millis, then: Millis) -> String {
    if then == 0 {
        return "never".to_string();
    }
    if then >= now {
        return "just now".to_string();
    }
    format!("{} ago", format_duration(Duration::from_millis(now - then)))
}

/// `850ms`, `12s`, `4m12s`, `3h05m`, `2d3h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `HH:MM:SSZ` of a Unix ms time (UTC, for event lines).
pub fn utc_clock(at: Millis) -> String {
    let s = at / 1000 % 86400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// `45% 1.17 GiB/2.60 GiB 110.3 MB/s`, or the parts that are known.
pub fn progress_cell(p: &Progress) -> String {
    let mut parts = Vec::new();
    if p.total > 0 {
        let pct = (p.done as f64 / p.total as f64 * 100.0).min(100.0);
        parts.push(format!("{pct:.0}%"));
        parts.push(format!("{}/{}", human_bytes(p.done), human_bytes(p.total)));
    } else if p.done > 0 {
        parts.push(human_bytes(p.done));
    }
    if p.rate > 0.0 {
        parts.push(rate_cell(p.rate));
    }
    if !p.message.is_empty() {
        parts.push(p.message.clone());
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// `110.3 MB/s` (decimal, as vendors quote).
pub fn rate_cell(bytes_per_s: f64) -> String {
    format!("{:.1} MB/s", bytes_per_s / 1e6)
}

/// A left-aligned text table with a header row.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// True when only the header is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() == 1
    }

    /// The table, two spaces between columns, no trailing blanks.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < r.len() {
                    line.extend(std::iter::repeat_n(' ', width[i] - c.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let now = 1_700_000_000_000;
        assert_eq!(format_age(now, 0), "never");
        assert_eq!(format_age(now, now - 12_000), "12s ago");
        assert_eq!(format_age(now, now - 252_000), "4m12s ago");
        assert_eq!(
            format_age(now, now - (3 * 3600 + 5 * 60) * 1000),
            "3h05m ago"
        );
        assert_eq!(
            format_age(now, now - (2 * 86400 + 3 * 3600) * 1000),
            "2d3h ago"
        );
        assert_eq!(format_age(now, now + 5_000), "just now");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(59)), "59s");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m00s");
        assert_eq!(format_duration(Duration::from_secs(3599)), "59m59s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h00m");
        assert_eq!(format_duration(Duration::from_secs(90000)), "1d1h");
    }

    #[test]
    fn clock() {
        // 2023-11-14T22:13:20Z
        assert_eq!(utc_clock(1_700_000_000_000), "22:13:20Z");
    }

    #[test]
    fn progress_cells() {
        let p = Progress {
            done: 1 << 30,
            total: 4 << 30,
            rate: 110.3e6,
            message: String::new(),
        };
        assert_eq!(progress_cell(&p), "25% 1.00 GiB/4.00 GiB 110.3 MB/s");
        assert_eq!(progress_cell(&Progress::default()), "-");
        let msg = Progress {
            message: "waiting for the session".into(),
            ..Progress::default()
        };
        assert_eq!(progress_cell(&msg), "waiting for the session");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["MAC", "STATE"]);
        t.row(vec!["aa:bb:cc:dd:ee:01".into(), "running".into()]);
        t.row(vec!["x".into(), "".into()]);
        assert_eq!(
            t.render(),
            "MAC                STATE\naa:bb:cc:dd:ee:01  running\nx\n"
        );
    }
}
