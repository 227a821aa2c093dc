//! A server-sent events parser (the WHATWG `text/event-stream` rules), fed
//! whatever bytes a read returned: lines may be cut anywhere, end in LF, CRLF
//! or CR; `:` lines are comments (keep-alives); `data:` lines of one event
//! join with `\n`; a blank line dispatches.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The last `id:` seen on the stream, if any.
    pub id: Option<String>,
}

/// The stream broke the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`]: not an event stream, or a broken one.
    LineTooLong,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::LineTooLong => write!(f, "an event stream line longer than {MAX_LINE} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

/// The longest line accepted (an `EventRecord` is a few hundred bytes).
pub const MAX_LINE: usize = 4 << 20;

/// Parser state between reads.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was a CR: an LF right after it ends nothing.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// Reconnection delay the server asked for, in ms.
    pub retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; complete events are pushed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out);
                    self.line = line;
                    self.line.clear();
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                let event = std::mem::take(&mut self.event);
                out.push(SseEvent {
                    event: if event.is_empty() {
                        "message".to_string()
                    } else {
                        event
                    },
                    data,
                    id: self.last_id.clone(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*text, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn one_event_with_kind_and_id() {
        let ev = parse_all(&[b"event: task.started\nid: 7\ndata: {\"seq\":7}\n\n"]);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: "task.started".into(),
                data: "{\"seq\":7}".into(),
                id: Some("7".into())
            }]
        );
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let ev = parse_all(&[b"data: {\"a\":\ndata:1}\ndata\n\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"a\":\n1}\n");
        assert_eq!(ev[0].event, "message");
    }

    #[test]
    fn comments_and_keep_alives_dispatch_nothing() {
        let ev = parse_all(&[b": keep-alive\n\n:\n\n", b"event: x\n\n", b"data: y\n\n"]);
        // `event: x` with no data is dropped, and its type does not leak
        // into the next event.
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "message");
        assert_eq!(ev[0].data, "y");
    }

    #[test]
    fn partial_reads_anywhere() {
        let stream: &[u8] = b"event: a\r\ndata: one\r\n\r\n: ping\rdata: two\r\rdata:three\n\n";
        let whole = parse_all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(
            whole.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        for cut in 0..stream.len() {
            assert_eq!(
                parse_all(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn unfinished_event_waits_for_its_blank_line() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: half", &mut out).unwrap();
        p.feed(b"\n", &mut out).unwrap();
        assert!(out.is_empty());
        p.feed(b"\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn retry_field_and_overlong_line() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"retry: 1500\n\n", &mut out).unwrap();
        assert_eq!(p.retry_ms, Some(1500));
        let big = vec![b'x'; MAX_LINE + 1];
        assert_eq!(p.feed(&big, &mut out), Err(SseError::LineTooLong));
    }
}
