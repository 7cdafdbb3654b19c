//! A PostgreSQL connection stream that refuses a message over the cap before
//! the driver holds it. tokio-postgres reads each backend message whole into
//! memory before the host sees a row; this stream, below it, reads every
//! message's length header (a type byte and a big-endian length that counts
//! itself) as the bytes pass and fails the read at a header announcing more
//! than the cap, so at most one read buffer past the header is ever held.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The size of a message the stream refused, shared with the session that reports it (0: none).
pub(super) type Refused = Arc<AtomicU64>;

/// A stream whose backend messages are at most `cap` bytes long.
pub(super) struct Capped<S> {
    inner: S,
    cap: u64,
    /// Bytes of the current message's header seen so far, and the header itself.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message's body still to pass.
    remaining: u64,
    refused: Refused,
}

impl<S> Capped<S> {
    /// Wraps `inner` (after TLS, if any): messages longer than `cap` fail the read.
    pub(super) fn new(inner: S, cap: u64, refused: Refused) -> Self {
        Self { inner, cap, header: [0; 5], have: 0, remaining: 0, refused }
    }

    /// Follows the message framing over `bytes`; errs at a header over the cap.
    fn pass(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len() as u64);
                self.remaining -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == 5 {
                self.have = 0;
                let length =
                    u64::from(u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]));
                if length > self.cap {
                    tracing::warn!(length, cap = self.cap, "refusing a database message over the cap");
                    self.refused.store(length, Ordering::SeqCst);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the server sent a message of {length} bytes, over the cap of {} bytes", self.cap),
                    ));
                }
                self.remaining = length.saturating_sub(4);
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                match self.pass(&new) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => {
                        buf.set_filled(before);
                        Poll::Ready(Err(e))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[tokio::test]
    async fn messages_under_the_cap_pass_whole_and_split_anywhere() {
        let (mut server, client) = tokio::io::duplex(7);
        let mut stream = message(b'D', &[1; 100]);
        stream.extend(message(b'C', b"SELECT 1\0"));
        let expected = stream.clone();
        tokio::spawn(async move { server.write_all(&stream).await });
        let mut capped = Capped::new(client, 200, Refused::default());
        let mut got = vec![0; expected.len()];
        capped.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_header_over_the_cap_fails_the_read_before_its_body_is_read() {
        let (mut server, client) = tokio::io::duplex(64 * 1024);
        // A 200 MB row is announced; the server would go on sending it.
        let mut head = message(b'T', b"col");
        head.extend_from_slice(&[b'D']);
        head.extend_from_slice(&200_000_004u32.to_be_bytes());
        let writer = tokio::spawn(async move {
            server.write_all(&head).await?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while sent < 200_000_000 {
                if server.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            Ok::<u64, io::Error>(sent)
        });
        let refused = Refused::default();
        let mut capped = Capped::new(client, 1 << 20, refused.clone());
        let mut read = 0u64;
        let mut buf = vec![0; 8192];
        let err = loop {
            match capped.read(&mut buf).await {
                Ok(0) => panic!("the stream ended without refusing the message"),
                Ok(n) => read += n as u64,
                Err(e) => break e,
            }
        };
        drop(capped);
        assert!(err.to_string().contains("200000004 bytes"), "{err}");
        assert_eq!(refused.load(Ordering::SeqCst), 200_000_004);
        // Nothing of the row's body reached the reader: only the message before it.
        assert!(read <= 8, "{read} bytes passed the cap");
        let sent = writer.await.unwrap().unwrap();
        assert!(sent < 1 << 20, "the server wrote {sent} bytes before the reader stopped");
    }
}
