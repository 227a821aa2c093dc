//! `rackcast audit`: what operators did (token, action, path, result),
//! oldest first, from the server's append-only audit log.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use rackcast_engine::sched::api::{AuditEntry, Millis};

use super::client::show::{now_ms, Table};
use super::client::{Client, ClientArgs};

/// Options of `rackcast audit`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  rackcast audit --since 2h\n  \
    rackcast audit --since 2026-12-05T08:00:00Z --json | jq -r '.[] | select(.status >= 400)'")]
pub struct AuditArgs {
    /// From this time on: a duration ago (`90s`, `30m`, `2h`, `7d`) or an
    /// RFC 3339 time (`2026-12-05T08:00:00Z`). Default: everything.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rackcast audit`.
pub fn run(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let since = match &a.since {
        Some(t) => since_ms(t, now_ms())?,
        None => 0,
    };
    let client = Client::new(&a.client)?;
    let path = format!("/api/v1/audit?since={since}");
    if a.json {
        let v: serde_json::Value = client.get(&path)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let entries: Vec<AuditEntry> = client.get(&path)?;
    if entries.is_empty() {
        eprintln!("no operator actions recorded in that time");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["TIME", "TOKEN", "ORIGIN", "ACTION", "PATH", "STATUS"]);
    for e in entries {
        t.row(vec![
            when(e.at),
            e.token,
            e.origin,
            e.action,
            e.path,
            e.status.to_string(),
        ]);
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

/// `--since` as Unix ms: a duration before `now`, or an RFC 3339 time.
pub(crate) fn since_ms(t: &str, now: Millis) -> anyhow::Result<Millis> {
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(now.saturating_sub(d.as_millis() as u64));
    }
    let at = humantime::parse_rfc3339_weak(t).with_context(|| {
        format!("--since {t:?}: give a duration (30m, 2h, 7d) or a time (2026-12-05T08:00:00Z)")
    })?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

/// A Unix ms time as RFC 3339 (UTC, seconds).
pub(crate) fn when(at: Millis) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(at))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_ago_and_times() {
        let now = 1_800_000_000_000;
        assert_eq!(since_ms("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(since_ms("90s", now).unwrap(), now - 90_000);
        assert_eq!(
            since_ms("2026-12-05T08:00:00Z", now).unwrap(),
            1_796_457_600_000
        );
        let e = since_ms("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("--since \"yesterday\""), "{e}");
        assert_eq!(when(1_796_457_600_000), "2026-12-05T08:00:00Z");
    }
}
