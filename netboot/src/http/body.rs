//! File bodies of the boot HTTP server, sent with `sendfile(2)`.
//!
//! Why sendfile: in a boot storm a rack powered on together (1,000 targets,
//! each fetching about 24 MiB of kernel and initramfs) pulls tens of GB of
//! the same few files. The kernel moves them from the page cache to the
//! socket without a copy through userspace or a syscall pair per 64 KiB,
//! so the server's CPU per byte is the kernel's alone (on loopback with 100
//! clients: about 0.13 CPU seconds per GiB against 0.8 to 1.3 for the copy;
//! `benches/netboot-vs-peers.sh`, case `http`).
//!
//! The socket stays non-blocking under tokio: each `sendfile` goes as far
//! as the socket buffer takes, and on `EAGAIN` the task waits for
//! writability. The file's pages are expected to be cached (every target
//! fetches the same ones); a cold page is read inside the call, as nginx's
//! sendfile does.
//!
//! Something that is not a regular file (none is served today: the tree
//! resolves regular files only), or a file on a file system sendfile cannot
//! read from, falls back to copying through a buffer.

use std::io::ErrorKind;
use std::os::fd::AsFd;

use nix::errno::Errno;
use tokio::io::{AsyncReadExt, AsyncSeekExt, Interest};
use tokio::time::timeout;

use super::{timed_out, Timed};
use crate::metrics::NetbootMetrics;

/// File bytes copied per write on the fallback path.
const COPY_CHUNK: usize = 64 * 1024;
/// Most one `sendfile` call is asked for (Linux moves at most this anyway).
const SENDFILE_MAX: usize = 0x7fff_f000;

/// Sends bytes `[start, end)` of `file` on `stream`, counting them in
/// `metrics` as they go. Each wait for the client to take data gives up
/// after the stream's write timeout.
pub(super) async fn send(
    stream: &mut Timed,
    file: tokio::fs::File,
    regular: bool,
    start: u64,
    end: u64,
    metrics: &NetbootMetrics,
) -> std::io::Result<()> {
    if !regular {
        return copy(stream, file, start, end, metrics).await;
    }
    let file = file.into_std().await;
    let mut offset = i64::try_from(start).map_err(|_| ErrorKind::InvalidInput)?;
    let mut left = end.saturating_sub(start);
    while left > 0 {
        let want = usize::try_from(left).map_or(SENDFILE_MAX, |l| l.min(SENDFILE_MAX));
        let sent = timeout(
            stream.write_timeout,
            sendfile_once(stream, &file, &mut offset, want),
        )
        .await
        .map_err(|_| timed_out())?;
        let n = match sent {
            Ok(n) => n,
            // A file system that sendfile cannot read from: copy the rest.
            Err(e) if unsupported(&e) => {
                let file = tokio::fs::File::from_std(file);
                return copy(stream, file, end - left, end, metrics).await;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            // The file shrank under us; the client sees a short body.
            return Err(ErrorKind::UnexpectedEof.into());
        }
        metrics.http_bytes(n as u64);
        left = left.saturating_sub(n as u64);
    }
    Ok(())
}

/// Whether `e` is sendfile refusing the file (a file system without
/// splice support) rather than the socket failing.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS)
    )
}

/// One `sendfile` once the socket is writable: the bytes it moved from
/// `offset` (which it advances).
async fn sendfile_once(
    stream: &Timed,
    file: &std::fs::File,
    offset: &mut i64,
    want: usize,
) -> std::io::Result<usize> {
    loop {
        stream.inner.writable().await?;
        let sent = stream.inner.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(
                stream.inner.as_fd(),
                file.as_fd(),
                Some(&mut *offset),
                want,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            r => return r,
        }
    }
}

/// The copy through userspace, for what `sendfile` cannot read.
async fn copy(
    stream: &mut Timed,
    mut file: tokio::fs::File,
    start: u64,
    end: u64,
    metrics: &NetbootMetrics,
) -> std::io::Result<()> {
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut left = end.saturating_sub(start);
    let mut chunk = vec![0u8; COPY_CHUNK];
    while left > 0 {
        let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut chunk[..want]).await?;
        if n == 0 {
            // The file shrank under us; the client sees a short body.
            return Err(ErrorKind::UnexpectedEof.into());
        }
        stream.write_all(&chunk[..n]).await?;
        metrics.http_bytes(n as u64);
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// Bytes `[start, end)` of a file as `send` puts them on a loopback
    /// socket, by sendfile (`regular`) or by the copy.
    async fn sent(data: &[u8], regular: bool, start: u64, end: u64) -> Vec<u8> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, data).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let (inner, _) = listener.accept().await.unwrap();
        let mut stream = Timed {
            inner,
            write_timeout: Duration::from_secs(10),
        };
        let file = tokio::fs::File::open(f.path()).await.unwrap();
        send(
            &mut stream,
            file,
            regular,
            start,
            end,
            &NetbootMetrics::default(),
        )
        .await
        .unwrap();
        drop(stream);
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn sendfile_and_the_copy_send_the_same_bytes() {
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for regular in [true, false] {
            let got = sent(&data, regular, 0, data.len() as u64).await;
            assert!(got == data, "whole, regular={regular}");
            let got = sent(&data, regular, 65_537, 2_000_001).await;
            assert!(got == data[65_537..2_000_001], "range, regular={regular}");
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_asked_is_an_error() {
        for regular in [true, false] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut f, &[1u8; 1000]).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = TcpStream::connect(addr).await.unwrap();
            let (inner, _) = listener.accept().await.unwrap();
            let mut stream = Timed {
                inner,
                write_timeout: Duration::from_secs(10),
            };
            let file = tokio::fs::File::open(f.path()).await.unwrap();
            let e = send(
                &mut stream,
                file,
                regular,
                0,
                2000,
                &NetbootMetrics::default(),
            )
            .await
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "regular={regular}");
        }
    }
}
