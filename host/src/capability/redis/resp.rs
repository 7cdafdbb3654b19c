//! RESP2, the Redis wire protocol, as far as a step's commands need it: a command out as an array
//! of bulk strings, a reply in under a byte budget that is checked at each length header, before
//! the bytes it announces are read or held.

use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// One reply as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A nil bulk string or array.
    Nil,
    /// `+OK`.
    Status(String),
    /// `-ERR …`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `*2\r\n…`.
    Array(Vec<Frame>),
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The reply is larger than the budget left.
    #[error("the reply is larger than {0} bytes")]
    TooLarge(usize),
    /// Not RESP2, or nested too deep.
    #[error("not a Redis reply: {0}")]
    Protocol(String),
    /// The connection broke.
    #[error("{0}")]
    Io(String),
}

/// Arrays nested deeper than this are refused: no command a step may run (or `COMMAND INFO`,
/// with its key specifications) replies deeper.
const MAX_DEPTH: usize = 8;

/// A command as the server reads it.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply, taking every byte it reads from `budget`.
pub fn read<'a, R: AsyncBufRead + Unpin + Send>(
    reader: &'a mut R,
    budget: &'a mut usize,
) -> Pin<Box<dyn Future<Output = Result<Frame, ReadError>> + Send + 'a>> {
    read_at(reader, budget, 0)
}

fn read_at<'a, R: AsyncBufRead + Unpin + Send>(
    reader: &'a mut R,
    budget: &'a mut usize,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Result<Frame, ReadError>> + Send + 'a>> {
    Box::pin(async move {
        let line = read_line(reader, budget).await?;
        let (kind, rest) = line.split_first().ok_or_else(|| ReadError::Protocol("an empty line".into()))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| ReadError::Protocol(format!("`{}` is not a number", text())))
        };
        match kind {
            b'+' => Ok(Frame::Status(text())),
            b'-' => Ok(Frame::Error(text())),
            b':' => number().map(Frame::Integer),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Frame::Nil);
                }
                let len = len as usize;
                take(budget, len.saturating_add(2))?;
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes).await.map_err(|e| ReadError::Io(e.to_string()))?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(ReadError::Protocol("a bulk string not ended by CRLF".into()));
                }
                bytes.truncate(len);
                Ok(Frame::Bulk(bytes))
            }
            b'*' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Frame::Nil);
                }
                if depth >= MAX_DEPTH {
                    return Err(ReadError::Protocol(format!("arrays nested deeper than {MAX_DEPTH}")));
                }
                // Each element takes at least three bytes: an array longer than the budget allows is
                // refused before anything is held for it.
                take(budget, (len as usize).saturating_mul(3))?;
                *budget += len as usize * 3;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_at(reader, budget, depth + 1).await?);
                }
                Ok(Frame::Array(items))
            }
            other => Err(ReadError::Protocol(format!("unexpected type byte {:?}", *other as char))),
        }
    })
}

fn take(budget: &mut usize, bytes: usize) -> Result<(), ReadError> {
    match budget.checked_sub(bytes) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(ReadError::TooLarge(*budget)),
    }
}

/// One CRLF-ended line without its CRLF, never longer than the budget.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, budget: &mut usize) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await.map_err(|e| ReadError::Io(e.to_string()))?;
        if available.is_empty() {
            return Err(ReadError::Io("the server closed the connection".into()));
        }
        let (used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        take(budget, used)?;
        line.extend_from_slice(&available[..used]);
        reader.consume(used);
        if done {
            break;
        }
    }
    if !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol("a line not ended by CRLF".into()));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8], mut budget: usize) -> Result<Frame, ReadError> {
        let mut reader = tokio::io::BufReader::new(bytes);
        read(&mut reader, &mut budget).await
    }

    #[tokio::test]
    async fn replies_of_every_type_are_read() {
        assert_eq!(parse(b"+OK\r\n", 100).await, Ok(Frame::Status("OK".into())));
        assert_eq!(parse(b"-ERR no\r\n", 100).await, Ok(Frame::Error("ERR no".into())));
        assert_eq!(parse(b":-3\r\n", 100).await, Ok(Frame::Integer(-3)));
        assert_eq!(parse(b"$-1\r\n", 100).await, Ok(Frame::Nil));
        assert_eq!(parse(b"$4\r\na\r\nb\r\n", 100).await, Ok(Frame::Bulk(b"a\r\nb".to_vec())));
        let scan = b"*2\r\n$1\r\n0\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n";
        assert_eq!(
            parse(scan, 100).await,
            Ok(Frame::Array(vec![
                Frame::Bulk(b"0".to_vec()),
                Frame::Array(vec![Frame::Bulk(b"k:1".to_vec()), Frame::Bulk(b"k:2".to_vec())])
            ]))
        );
    }

    #[tokio::test]
    async fn a_reply_over_the_budget_is_refused_at_its_length_header() {
        // The header announces a gigabyte that never comes: refused without waiting for or holding it.
        assert_eq!(parse(b"$1073741824\r\n", 1 << 20).await, Err(ReadError::TooLarge((1 << 20) - 13)));
        assert!(matches!(parse(b"*100000000\r\n", 1 << 20).await, Err(ReadError::TooLarge(_))));
        assert!(matches!(parse(b"+a very long status line\r\n", 8).await, Err(ReadError::TooLarge(_))));
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        assert_eq!(encode(&["GET", "a b"]), b"*2\r\n$3\r\nGET\r\n$3\r\na b\r\n");
    }
}
