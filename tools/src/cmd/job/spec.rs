//! Job files (TOML, YAML, JSON) into a checked [`JobSpec`], and the small
//! parsers of the job shortcuts' flags (`--start-at`, durations).
//!
//! Everything is checked client-side before the POST, so a typo fails with
//! the file, line and column instead of a server round trip.

use std::fmt;
use std::path::Path;

use rackcast_engine::sched::api::{JobSpec, TaskKind};

use rackcast_engine::sched::MacAddr;

/// How a job file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFormat {
    /// `.toml`
    Toml,
    /// `.yaml` / `.yml`
    Yaml,
    /// `.json`
    Json,
}

impl JobFormat {
    /// The format a file name says, if it says one.
    pub fn from_path(p: &Path) -> Option<JobFormat> {
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(JobFormat::Toml),
            "yaml" | "yml" => Some(JobFormat::Yaml),
            "json" => Some(JobFormat::Json),
            _ => None,
        }
    }

    /// Guesses from the text (stdin, odd extensions): `{` is JSON, a `[table]`
    /// or `key = value` first line is TOML, anything else YAML.
    pub fn sniff(text: &str) -> JobFormat {
        let first = text
            .lines()
            .map(|l| l.trim_start_matches('\u{feff}').trim())
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(first) = first else {
            return JobFormat::Toml;
        };
        if first.starts_with('{') {
            return JobFormat::Json;
        }
        if first.starts_with('[') {
            return JobFormat::Toml;
        }
        if first.starts_with("---") || first.starts_with("- ") {
            return JobFormat::Yaml;
        }
        match (first.find('='), first.find(':')) {
            (Some(eq), Some(colon)) if eq < colon => JobFormat::Toml,
            (Some(_), None) => JobFormat::Toml,
            _ => JobFormat::Yaml,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JobFormat::Toml => "TOML",
            JobFormat::Yaml => "YAML",
            JobFormat::Json => "JSON",
        }
    }
}

/// A job file that does not make a job: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFileError {
    /// File name (`<stdin>` for `-`).
    pub origin: String,
    /// 1-based line and column, when the parser knows them.
    pub pos: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for JobFileError {}

/// Reads `path` (`-`: stdin) and parses it into a checked job.
pub fn load_job_file(path: &str) -> anyhow::Result<JobSpec> {
    let (text, origin, format) = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| anyhow::anyhow!("reading the job from stdin: {e}"))?;
        let f = JobFormat::sniff(&s);
        (s, "<stdin>".to_string(), f)
    } else {
        let s = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the job file {path}: {e}"))?;
        let f = JobFormat::from_path(Path::new(path)).unwrap_or_else(|| JobFormat::sniff(&s));
        (s, path.to_string(), f)
    };
    Ok(parse_job(&text, format, &origin)?)
}

/// Parses a job in `format` and checks it; `origin` names it in errors.
pub fn parse_job(text: &str, format: JobFormat, origin: &str) -> Result<JobSpec, JobFileError> {
    let err = |pos, message: String| JobFileError {
        origin: origin.to_string(),
        pos,
        message,
    };
    let parsed: Result<JobSpec, (Option<(usize, usize)>, String)> = match format {
        JobFormat::Toml => toml::from_str(text).map_err(|e| {
            let pos = e.span().map(|s| line_col(text, s.start));
            (pos, e.message().trim().to_string())
        }),
        JobFormat::Yaml => serde_norway::from_str(text).map_err(|e| {
            let pos = e.location().map(|l| (l.line(), l.column()));
            (pos, strip_position(e.to_string(), pos))
        }),
        JobFormat::Json => serde_json::from_str(text).map_err(|e| {
            let pos = (e.line() > 0).then(|| (e.line(), e.column()));
            (pos, strip_position(e.to_string(), pos))
        }),
    };
    let mut spec = parsed
        .map_err(|(pos, msg)| err(pos, format!("not a valid {} job: {msg}", format.name())))?;
    check_spec(&mut spec).map_err(|m| err(None, m))?;
    Ok(spec)
}

/// What serde cannot say: targets are MACs (normalised here), listed once;
/// there is at least one task and no task has an empty name or script.
pub fn check_spec(spec: &mut JobSpec) -> Result<(), String> {
    if spec.targets.is_empty() {
        return Err("`targets` is empty: list the MACs the job runs on".to_string());
    }
    let mut seen: Vec<String> = Vec::with_capacity(spec.targets.len());
    for (i, t) in spec.targets.iter_mut().enumerate() {
        let mac = MacAddr::parse(t)
            .map_err(|e| format!("targets[{i}]: {e}"))?
            .to_string();
        if seen.contains(&mac) {
            return Err(format!("targets[{i}]: {mac} is listed twice"));
        }
        seen.push(mac.clone());
        *t = mac;
    }
    if spec.tasks.is_empty() {
        return Err("the job has no tasks (add a [[task]] table)".to_string());
    }
    for (i, t) in spec.tasks.iter().enumerate() {
        let n = i + 1;
        match &t.kind {
            TaskKind::Create { image, .. } | TaskKind::Distribute { image, .. } => {
                if image.trim().is_empty() {
                    return Err(format!("task {n} ({}): `image` is empty", t.kind.word()));
                }
            }
            TaskKind::Script { script, .. } => {
                if script.trim().is_empty() {
                    return Err(format!("task {n} (script): `script` is empty"));
                }
            }
            TaskKind::Power { .. } => {}
            TaskKind::Reboot { to } => {
                if to.trim().is_empty() {
                    return Err(format!(
                        "task {n} (reboot): `to` is empty (an environment, or `local`)"
                    ));
                }
            }
        }
        if t.timeout == Some(0) {
            return Err(format!("task {n}: `timeout` must be at least 1 second"));
        }
    }
    if spec.cast.min_targets == Some(0) {
        return Err("cast.min_targets must be at least 1".to_string());
    }
    Ok(())
}

/// The message without the ` at line L column C` the parser appended.
fn strip_position(msg: String, pos: Option<(usize, usize)>) -> String {
    match pos {
        Some((l, c)) => msg.replacen(&format!(" at line {l} column {c}"), "", 1),
        None => msg,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// `90`, `90s`, `10m`, `2h`, `1h30m`, `1d` -> seconds.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (try 90, 90s, 10m or 1h30m)".to_string());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration (try 90, 90s, 10m or 1h30m)"
                ))
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (try 90, 90s, 10m or 1h30m)"))?;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?}: a number without a unit at the end (s, m, h or d)"
        ));
    }
    Ok(total)
}

/// `--start-at`: Unix seconds, RFC 3339 (`2025-06-01T22:00:00Z`,
/// `2025-06-01 22:00+02:00`) or `+DURATION` from `now` (Unix seconds).
pub fn parse_start_at(s: &str, now: u64) -> Result<u64, String> {
    let t = s.trim();
    if let Some(rel) = t.strip_prefix('+') {
        let d = parse_secs(rel)?;
        return now
            .checked_add(d)
            .ok_or_else(|| format!("{s:?} is too far"));
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| format!("{s:?} is too large"))?;
        if n >= 100_000_000_000 {
            return Err(format!(
                "{s:?} looks like milliseconds: --start-at takes Unix seconds"
            ));
        }
        return Ok(n);
    }
    parse_rfc3339(t).ok_or_else(|| {
        format!(
            "{s:?} is not a time: use Unix seconds, RFC 3339 with a zone \
             (2025-06-01T22:00:00Z or ...+02:00) or +DURATION (+10m)"
        )
    })
}

/// `YYYY-MM-DD(T| )HH:MM[:SS[.frac]](Z|±HH:MM)` -> Unix seconds.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' {
        return None;
    }
    let (hour, min) = (num(11..13)?, num(14..16)?);
    let mut i = 16;
    let mut sec = 0;
    if b.get(i) == Some(&b':') {
        sec = num(i + 1..i + 3)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month[(month - 1) as usize]
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let t = days * 86400 + hour * 3600 + min * 60 + sec - offset_secs;
    u64::try_from(t).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackcast_engine::sched::api::{CastPolicy, UnusedBlocks, VerifyMode};

    const TOML_JOB: &str = r#"
name = "rack 12"
targets = ["AA:BB:CC:DD:EE:01", "aa-bb-cc-dd-ee-02"]

[cast]
min_targets = 2
max_wait = 120

[[task]]
kind = "distribute"
image = "debian-12"
verify = "full"
env = "linux-x64"
timeout = 1800
retries = 1

[[task]]
kind = "reboot"
to = "local"
"#;

    #[test]
    fn toml_job() {
        let spec = parse_job(TOML_JOB, JobFormat::Toml, "j.toml").unwrap();
        assert_eq!(spec.name, "rack 12");
        assert_eq!(spec.targets, ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"]);
        assert_eq!(
            spec.cast,
            CastPolicy {
                min_targets: Some(2),
                max_wait: Some(120),
                start_at: None,
                rate: None,
                transport: Default::default(),
            }
        );
        assert_eq!(spec.tasks.len(), 2);
        assert_eq!(
            spec.tasks[0].kind,
            TaskKind::Distribute {
                image: "debian-12".into(),
                disk: None,
                verify: VerifyMode::Full,
                unused: UnusedBlocks::Keep,
                grow: false,
                cloud_init: None,
            }
        );
        assert_eq!(spec.tasks[0].env.as_deref(), Some("linux-x64"));
        assert_eq!(spec.tasks[0].timeout, Some(1800));
        assert_eq!(spec.tasks[0].retries, 1);
        assert_eq!(spec.tasks[1].kind, TaskKind::Reboot { to: "local".into() });
        assert_eq!(JobFormat::sniff(TOML_JOB), JobFormat::Toml);
    }

    const YAML_JOB: &str = "\
# a comment
targets:
  - aa:bb:cc:dd:ee:01
tasks:
  - kind: script
    script: |
      echo hello
      exit 3
    expect_exit: 3
";

    #[test]
    fn yaml_job() {
        let spec = parse_job(YAML_JOB, JobFormat::Yaml, "j.yaml").unwrap();
        assert_eq!(spec.name, "");
        assert_eq!(spec.cast, CastPolicy::default());
        assert_eq!(
            spec.tasks[0].kind,
            TaskKind::Script {
                script: "echo hello\nexit 3\n".into(),
                interpreter: None,
                expect_exit: 3
            }
        );
        assert_eq!(JobFormat::sniff(YAML_JOB), JobFormat::Yaml);
    }

    #[test]
    fn json_job() {
        let text = r#"{"targets":["aa:bb:cc:dd:ee:01"],
            "task":[{"kind":"create","image":"golden","disk":"/dev/sda"}]}"#;
        let spec = parse_job(text, JobFormat::Json, "j.json").unwrap();
        assert_eq!(
            spec.tasks[0].kind,
            TaskKind::Create {
                image: "golden".into(),
                disk: Some("/dev/sda".into())
            }
        );
        assert_eq!(JobFormat::sniff(text), JobFormat::Json);
    }

    #[test]
    fn malformed_toml_names_line_and_column() {
        let text = "targets = [\"aa:bb:cc:dd:ee:01\"]\n[[task]]\nkind = distribute\n";
        let e = parse_job(text, JobFormat::Toml, "bad.toml").unwrap_err();
        assert_eq!(e.pos, Some((3, 8)), "{e}");
        let s = e.to_string();
        assert!(s.starts_with("bad.toml:3:8: not a valid TOML job: "), "{s}");
    }

    #[test]
    fn malformed_yaml_names_line_and_column() {
        let text = "targets:\n  - aa:bb:cc:dd:ee:01\ntasks:\n  - kind: script\n    script: a: b\n";
        let e = parse_job(text, JobFormat::Yaml, "bad.yaml").unwrap_err();
        let (line, col) = e.pos.unwrap_or_else(|| panic!("no position: {e}"));
        assert_eq!((line, col), (5, 14), "{e}");
        assert!(
            e.to_string()
                .starts_with("bad.yaml:5:14: not a valid YAML job: "),
            "{e}"
        );
        assert!(!e.message.contains("at line 5 column 14"), "{e}");

        // A well-formed file of the wrong shape points at the offending task.
        let text =
            "targets:\n  - aa:bb:cc:dd:ee:01\ntasks:\n  - kind: script\n    interpreter: /bin/sh\n";
        let e = parse_job(text, JobFormat::Yaml, "bad.yaml").unwrap_err();
        assert_eq!(e.pos.map(|p| p.0), Some(4), "{e}");
        assert!(e.message.contains("missing field `script`"), "{e}");
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let text = "{\"targets\": [\"aa:bb:cc:dd:ee:01\"],\n \"task\": [}";
        let e = parse_job(text, JobFormat::Json, "bad.json").unwrap_err();
        assert_eq!(e.pos, Some((2, 11)), "{e}");
        assert!(!e.message.contains(" at line "), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let top = "targets = [\"aa:bb:cc:dd:ee:01\"]\npriority = 3\n[[task]]\nkind = \"reboot\"\nto = \"local\"\n";
        let e = parse_job(top, JobFormat::Toml, "u.toml").unwrap_err();
        assert!(e.message.contains("unknown field `priority`"), "{e}");
        assert_eq!(e.pos.map(|p| p.0), Some(2), "{e}");

        let cast = "targets: [aa:bb:cc:dd:ee:01]\ncast:\n  min_target: 2\ntasks:\n  - {kind: reboot, to: local}\n";
        let e = parse_job(cast, JobFormat::Yaml, "u.yaml").unwrap_err();
        assert!(e.message.contains("unknown field `min_target`"), "{e}");
        assert_eq!(e.pos.map(|p| p.0), Some(3), "{e}");

        let task = "targets = [\"aa:bb:cc:dd:ee:01\"]\n[[task]]\nkind = \"distribute\"\nimage = \"x\"\nverfy = \"full\"\n";
        let e = parse_job(task, JobFormat::Toml, "u.toml").unwrap_err();
        assert!(e.message.contains("verfy"), "{e}");

        let kind = "targets = [\"aa:bb:cc:dd:ee:01\"]\n[[task]]\nkind = \"format\"\n";
        let e = parse_job(kind, JobFormat::Toml, "u.toml").unwrap_err();
        assert!(e.message.contains("format"), "{e}");
    }

    #[test]
    fn missing_or_bad_targets() {
        let e = parse_job(
            "[[task]]\nkind = \"reboot\"\nto = \"local\"\n",
            JobFormat::Toml,
            "m.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("missing field `targets`"), "{e}");

        let e = parse_job(
            "targets = []\n[[task]]\nkind = \"reboot\"\nto = \"local\"\n",
            JobFormat::Toml,
            "m.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.toml: `targets` is empty: list the MACs the job runs on"
        );

        let e = parse_job(
            "targets = [\"node7\"]\n[[task]]\nkind = \"reboot\"\nto = \"local\"\n",
            JobFormat::Toml,
            "m.toml",
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("targets[0]: \"node7\" is not a MAC"),
            "{e}"
        );

        let e = parse_job(
            "targets = [\"aa:bb:cc:dd:ee:01\"]\ntask = []\n",
            JobFormat::Toml,
            "m.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("no tasks"), "{e}");
    }

    #[test]
    fn sniffing() {
        assert_eq!(JobFormat::sniff("\n# c\n[[task]]\n"), JobFormat::Toml);
        assert_eq!(JobFormat::sniff("name = \"a: b\"\n"), JobFormat::Toml);
        assert_eq!(JobFormat::sniff("---\ntargets: []\n"), JobFormat::Yaml);
        assert_eq!(JobFormat::sniff("name: \"a = b\"\n"), JobFormat::Yaml);
        assert_eq!(JobFormat::sniff("  {\"targets\":[]}"), JobFormat::Json);
        assert_eq!(
            JobFormat::from_path(Path::new("x/job.YML")),
            Some(JobFormat::Yaml)
        );
        assert_eq!(JobFormat::from_path(Path::new("job.txt")), None);
    }

    #[test]
    fn durations_in_seconds() {
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("10m"), Ok(600));
        assert_eq!(parse_secs("1h30m"), Ok(5400));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        assert!(parse_secs("").is_err());
        assert!(parse_secs("10x").is_err());
        assert!(parse_secs("1h30").is_err());
        assert!(parse_secs("m").is_err());
    }

    #[test]
    fn start_at() {
        let now = 1_700_000_000;
        assert_eq!(parse_start_at("1750000000", now), Ok(1_750_000_000));
        assert_eq!(parse_start_at("+10m", now), Ok(now + 600));
        assert_eq!(parse_start_at("1970-01-01T00:00:00Z", now), Ok(0));
        assert_eq!(
            parse_start_at("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_start_at("2023-11-14T23:13:20.250+01:00", now),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_start_at("2023-11-14 17:13:20-05:00", now),
            Ok(1_700_000_000)
        );
        assert_eq!(parse_start_at("2024-02-29T00:00Z", now), Ok(1_709_164_800));
        assert!(parse_start_at("2023-02-29T00:00:00Z", now).is_err());
        assert!(
            parse_start_at("2023-11-14T22:13:20", now).is_err(),
            "no zone"
        );
        assert!(parse_start_at("2023-13-01T00:00:00Z", now).is_err());
        assert!(parse_start_at("1700000000000", now)
            .unwrap_err()
            .contains("milliseconds"));
        assert!(parse_start_at("tomorrow", now).is_err());
        assert!(parse_start_at("", now).is_err());
    }
}
