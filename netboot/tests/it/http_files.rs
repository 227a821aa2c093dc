//! The boot HTTP server's file bodies (sent with sendfile) over a real
//! loopback socket: a multi-MiB file whole, a range in its middle and a
//! HEAD on one keep-alive connection, byte for byte, concurrent clients,
//! and the byte counter at `/metrics` counting bodies only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rackcast_netboot::http::HttpLimits;

use crate::http_limits::HttpFixture;

/// Not a multiple of any page or buffer size.
const LEN: usize = (7 << 20) + 12_345;

/// Deterministic bytes that differ at every offset worth checking.
fn content() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One response: the status line, the headers (names lowercased), and the
/// body (`Content-Length` bytes; none for a HEAD).
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a kept-alive connection and reads its response.
fn exchange(conn: &mut BufReader<TcpStream>, method: &str, path: &str, extra: &str) -> Response {
    write!(
        conn.get_mut(),
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
    )
    .unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap();
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut r = Response {
        status: status.trim_end().to_string(),
        headers,
        body: Vec::new(),
    };
    if method != "HEAD" {
        let n: usize = r.header("content-length").unwrap().parse().unwrap();
        r.body = vec![0; n];
        conn.read_exact(&mut r.body).unwrap();
    }
    r
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

#[test]
fn a_large_file_whole_in_a_range_and_by_head_comes_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = content();
    std::fs::write(dir.path().join("kernel"), &data).unwrap();
    let srv = HttpFixture::start(dir.path(), HttpLimits::default());
    let mut c = connect(srv.addr);

    let whole = exchange(&mut c, "GET", "/files/kernel", "");
    assert_eq!(whole.status, "HTTP/1.1 200 OK");
    assert_eq!(whole.header("content-length"), Some(&*LEN.to_string()));
    assert!(whole.body == data, "the whole file differs");

    // A HEAD says the length and sends no body: the next response on the
    // connection would not parse if it had.
    let head = exchange(&mut c, "HEAD", "/files/kernel", "");
    assert_eq!(head.status, "HTTP/1.1 200 OK");
    assert_eq!(head.header("content-length"), Some(&*LEN.to_string()));

    // A range in the middle, not page aligned at either end.
    let (a, b) = (1_000_003usize, 5_500_000usize);
    let part = exchange(
        &mut c,
        "GET",
        "/files/kernel",
        &format!("Range: bytes={a}-{b}\r\n"),
    );
    assert_eq!(part.status, "HTTP/1.1 206 Partial Content");
    assert_eq!(
        part.header("content-range"),
        Some(&*format!("bytes {a}-{b}/{LEN}"))
    );
    assert!(part.body == data[a..=b], "the range differs");

    // The last bytes, to the end of the file.
    let tail = exchange(&mut c, "GET", "/files/kernel", "Range: bytes=-1000\r\n");
    assert_eq!(tail.status, "HTTP/1.1 206 Partial Content");
    assert!(tail.body == data[LEN - 1000..], "the tail differs");

    // Concurrent clients each get the whole file.
    let addr = srv.addr;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                exchange(&mut c, "GET", "/files/kernel", "Connection: close\r\n").body
            })
        })
        .collect();
    for h in clients {
        assert!(h.join().unwrap() == data, "a concurrent fetch differs");
    }

    // The byte counter counts bodies as before: not heads, not HEAD.
    let metrics = exchange(&mut c, "GET", "/metrics", "");
    let text = String::from_utf8(metrics.body).unwrap();
    let sent = text.lines().find_map(|l| {
        l.strip_prefix("rackcast_http_boot_bytes_total")?
            .trim()
            .parse::<f64>()
            .ok()
    });
    let want = 7 * LEN + (b + 1 - a) + 1000;
    assert_eq!(sent, Some(want as f64), "{text}");
}
