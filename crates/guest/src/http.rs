//! A small HTTP/1.1 client for the function runtime ([`crate::invoke`]): one `POST` to
//! `127.0.0.1:<port>` per invocation, `Connection: close`, everything bounded by a deadline.
//!
//! Responses framed by `Content-Length`, by `Transfer-Encoding: chunked` or by the end of the
//! connection are understood; interim `1xx` responses are skipped. The body is kept up to a
//! limit (the rest is not read: the connection is closed) and flagged as truncated. Nothing here
//! panics on what the peer sends: a malformed response is an [`HttpError::BadResponse`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest status or header line accepted.
const MAX_LINE: usize = 8 * 1024;
/// The most header bytes (all lines together) accepted per response.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most interim (1xx) responses skipped before giving up.
const MAX_INTERIM: usize = 8;

/// What the workload answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, at most the limit given.
    pub body: Vec<u8>,
    /// The body was longer than the limit and was cut.
    pub truncated: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum HttpError {
    /// Nothing listens on the port.
    Refused {
        /// The port.
        port: u16,
    },
    /// Connecting failed otherwise.
    Connect {
        /// The port.
        port: u16,
        /// The cause.
        source: io::Error,
    },
    /// The deadline passed.
    TimedOut,
    /// Reading or writing failed.
    Io(io::Error),
    /// The peer's answer is not HTTP/1.x as we understand it.
    BadResponse(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused { port } => write!(
                f,
                "connection refused on 127.0.0.1:{port}: nothing in the guest listens on port {port}"
            ),
            HttpError::Connect { port, source } => {
                write!(f, "connecting to 127.0.0.1:{port}: {source}")
            }
            HttpError::TimedOut => write!(f, "no complete answer before the deadline"),
            HttpError::Io(e) => write!(f, "HTTP exchange failed: {e}"),
            HttpError::BadResponse(what) => write!(f, "bad HTTP response: {what}"),
        }
    }
}

fn io_error(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HttpError::TimedOut,
        _ => HttpError::Io(e),
    }
}

fn bad(what: impl Into<String>) -> HttpError {
    HttpError::BadResponse(what.into())
}

/// POSTs `body` to `http://127.0.0.1:<port><path>` with `headers` added, and reads the answer
/// (body kept up to `max_body` bytes), all before `deadline`.
pub fn post(
    port: u16,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    deadline: Instant,
    max_body: usize,
) -> Result<Response, HttpError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    if left().is_zero() {
        return Err(HttpError::TimedOut);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = match TcpStream::connect_timeout(&addr, left()) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(HttpError::Refused { port })
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            return Err(HttpError::TimedOut)
        }
        Err(source) => return Err(HttpError::Connect { port, source }),
    };
    let _ = stream.set_nodelay(true);
    let request = request_bytes(port, path, headers, body);
    stream
        .set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .map_err(HttpError::Io)?;
    match stream.write_all(&request) {
        Ok(()) => {}
        // A server may answer (and close) without reading the whole body: read what it said.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(io_error(e)),
    }
    read_response(DeadlineReader { stream, deadline }, max_body)
}

/// The request head and body.
fn request_bytes(port: u16, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: firefleet-guest\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A stream whose reads fail with `TimedOut` once the deadline passed.
struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

/// A buffer over a reader, for lines and counted bytes.
struct Input<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Input<R> {
    /// Reads more; false at end of input.
    fn fill(&mut self) -> Result<bool, HttpError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.inner.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// The next line without its CRLF (or LF); `None` at end of input before any byte.
    fn line(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            let pending = &self.buf[self.pos..];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let mut line = pending[..i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if pending.len() > MAX_LINE {
                return Err(bad(format!("a line longer than {MAX_LINE} bytes")));
            }
            if !self.fill()? {
                return if self.buf.len() > self.pos {
                    Err(bad("the connection closed in the middle of a line"))
                } else {
                    Ok(None)
                };
            }
        }
    }

    /// Up to `n` bytes into `sink`; false if the input ended first.
    fn copy(&mut self, mut n: u64, sink: &mut Body) -> Result<bool, HttpError> {
        while n > 0 {
            if self.pos == self.buf.len() && !self.fill()? {
                return Ok(false);
            }
            let have = &self.buf[self.pos..];
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(have.len());
            sink.push(&have[..take]);
            self.pos += take;
            n -= take as u64;
            if sink.truncated {
                return Ok(true); // the rest is not needed
            }
        }
        Ok(true)
    }
}

/// The body, kept up to a limit.
struct Body {
    data: Vec<u8>,
    max: usize,
    truncated: bool,
}

impl Body {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.truncated |= bytes.len() > room;
    }
}

/// How the body of a response is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads one response (after any interim ones) from `r`.
fn read_response(r: impl Read, max_body: usize) -> Result<Response, HttpError> {
    let mut input = Input {
        inner: r,
        buf: Vec::new(),
        pos: 0,
    };
    let mut interim = 0;
    let (status, framing) = loop {
        let (status, framing) = read_head(&mut input)?;
        if (100..200).contains(&status) {
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(bad("too many interim responses"));
            }
            continue;
        }
        break (status, framing);
    };
    let mut body = Body {
        data: Vec::new(),
        max: max_body,
        truncated: false,
    };
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            if !input.copy(n, &mut body)? {
                return Err(bad(format!(
                    "the connection closed after {} of {n} body bytes",
                    body.data.len()
                )));
            }
        }
        Framing::UntilClose => {
            // Ends at the end of input, or once the limit is passed.
            input.copy(u64::MAX, &mut body)?;
        }
        Framing::Chunked => read_chunks(&mut input, &mut body)?,
    }
    Ok(Response {
        status,
        body: body.data,
        truncated: body.truncated,
    })
}

/// The status line and headers: the status and how the body is framed.
fn read_head<R: Read>(input: &mut Input<R>) -> Result<(u16, Framing), HttpError> {
    let line = input
        .line()?
        .ok_or_else(|| bad("the connection closed without an answer"))?;
    let status = parse_status_line(&line)?;
    let mut header_bytes = line.len();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    loop {
        let line = input
            .line()?
            .ok_or_else(|| bad("the connection closed in the headers"))?;
        if line.is_empty() {
            break;
        }
        header_bytes += line.len();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(bad(format!("headers longer than {MAX_HEADER_BYTES} bytes")));
        }
        let text = String::from_utf8_lossy(&line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(bad(format!("a header line without a colon: {text:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| bad(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = last.eq_ignore_ascii_case("chunked");
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((status, framing))
}

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x status line: {text:?}")));
    }
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=999).contains(&c) => Ok(c),
        _ => Err(bad(format!("bad status code in {text:?}"))),
    }
}

fn read_chunks<R: Read>(input: &mut Input<R>, body: &mut Body) -> Result<(), HttpError> {
    loop {
        let line = input
            .line()?
            .ok_or_else(|| bad("the connection closed before the last chunk"))?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers up to the empty line; a peer that closes instead is forgiven.
            while let Some(l) = input.line()? {
                if l.is_empty() {
                    break;
                }
            }
            return Ok(());
        }
        if !input.copy(size, body)? {
            return Err(bad("the connection closed in the middle of a chunk"));
        }
        if body.truncated {
            return Ok(());
        }
        match input.line()? {
            Some(l) if l.is_empty() => {}
            _ => return Err(bad("a chunk not followed by CRLF")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn parse(raw: &[u8], max: usize) -> Result<Response, HttpError> {
        read_response(raw, max)
    }

    #[test]
    fn reads_length_chunked_and_until_close_bodies() {
        let r = parse(
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            100,
        )
        .unwrap();
        assert_eq!(
            (r.status, &r.body[..], r.truncated),
            (201, &b"hello"[..], false)
        );
        let r = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
        let r = parse(b"HTTP/1.0 404 Not Found\nServer: x\n\nnot here", 100).unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"not here"[..]));
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn cuts_long_bodies() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            4,
        )
        .unwrap();
        assert_eq!((&r.body[..], r.truncated), (&b"0123"[..], true));
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\n0123456789", 4).unwrap();
        assert_eq!((&r.body[..], r.truncated), (&b"0123"[..], true));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
            4,
        )
        .unwrap();
        assert_eq!((&r.body[..], r.truncated), (&b"0123"[..], true));
    }

    #[test]
    fn refuses_malformed_responses_without_panicking() {
        for raw in [
            &b""[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nContent-Le",
        ] {
            let err = parse(raw, 100).unwrap_err();
            assert!(
                matches!(err, HttpError::BadResponse(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        assert!(matches!(parse(&long, 10), Err(HttpError::BadResponse(_))));
    }

    #[test]
    fn posts_to_a_local_server_and_reports_refusals_and_timeouts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"ping") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                .unwrap();
            // The second connection says nothing: the client must time out.
            let (_silent, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            String::from_utf8(got).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let headers = [("X-Request-Id", "7".to_string())];
        let r = post(port, "/fn", &headers, b"ping", deadline, 100).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"pong"[..]));
        let started = Instant::now();
        let short = Instant::now() + Duration::from_millis(200);
        let err = post(port, "/fn", &[], b"", short, 100).unwrap_err();
        assert!(matches!(err, HttpError::TimedOut), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /fn HTTP/1.1\r\n")
                && request.contains("\r\nContent-Length: 4\r\n")
                && request.contains("\r\nConnection: close\r\n")
                && request.contains("\r\nX-Request-Id: 7\r\n")
                && request.ends_with("\r\n\r\nping"),
            "{request}"
        );
        // Nothing listens any more: a refusal naming the port.
        let err = post(port, "/fn", &[], b"", deadline, 100).unwrap_err();
        assert!(
            matches!(err, HttpError::Refused { port: p } if p == port),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("port {port}")), "{err}");
    }
}
