//! The host<->guest channel protocol: JSON lines over the virtio-serial port
//! [`crate::AGENT_PORT_NAME`].
//!
//! Every line is one JSON object `{"v":1,"type":"<kind>", ...fields}` terminated by `\n`.
//! Kinds: `hello {version}`, `ready`, `heartbeat {uptime_ms}`, `exited {code}` (guest -> host) and
//! `shutdown` (host -> guest). Decoding is tolerant: an unknown `type` is [`Decoded::Unknown`]
//! (newer peers may add kinds), a line longer than the limit or not JSON is a [`DecodeError`] the
//! caller drops and counts. Nothing here panics on input.

use std::io::{self, Read};

/// The protocol version this build speaks (the `v` field of every line).
pub const PROTO_VERSION: u32 = 1;
/// The longest line accepted, in bytes, without the newline.
pub const MAX_LINE: usize = 64 * 1024;

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Guest -> host, first message on each connection: the protocol version the guest speaks.
    Hello {
        /// Protocol version.
        version: u32,
    },
    /// Guest -> host: the guest is up.
    Ready,
    /// Guest -> host, every second.
    Heartbeat {
        /// Milliseconds since the guest's init started.
        uptime_ms: u64,
    },
    /// Guest -> host: the workload exited with this code (128+signal if killed by a signal).
    Exited {
        /// Exit code.
        code: i32,
    },
    /// Host -> guest: stop the workload and power off.
    Shutdown,
}

/// A decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message this build knows.
    Message(Message),
    /// A well-formed line of a kind this build does not know (ignore it).
    Unknown {
        /// The `type` field.
        kind: String,
    },
}

/// Why a line was dropped.
#[derive(Debug)]
pub enum DecodeError {
    /// The line is longer than the limit; its bytes were discarded.
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not a JSON object, or a known kind with bad fields.
    Malformed(serde_json::Error),
    /// No `type` string field.
    MissingType,
    /// A `v` other than [`PROTO_VERSION`].
    UnsupportedVersion(u64),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLong { max } => write!(f, "line longer than {max} bytes"),
            DecodeError::Malformed(_) => write!(f, "malformed message"),
            DecodeError::MissingType => write!(f, "message without a type"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

/// Encodes a message as one line, newline included.
pub fn encode(msg: &Message) -> Vec<u8> {
    // An internally tagged enum serializes as `{"type":...,fields}`: splice `"v":1,` in front so
    // the version comes first on the wire.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut line = format!("{{\"v\":{PROTO_VERSION},").into_bytes();
    match body.split_first() {
        Some((b'{', rest)) if rest.len() > 1 => line.extend_from_slice(rest),
        // Unreachable for Message: every variant has at least its tag.
        _ => line = format!("{{\"v\":{PROTO_VERSION}}}").into_bytes(),
    }
    line.push(b'\n');
    line
}

/// Decodes one line (without or with its trailing newline / carriage return).
pub fn decode(line: &[u8]) -> Result<Decoded, DecodeError> {
    let line = trim_eol(line);
    if line.len() > MAX_LINE {
        return Err(DecodeError::TooLong { max: MAX_LINE });
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(DecodeError::Malformed)?;
    let obj = match value {
        serde_json::Value::Object(obj) => obj,
        other => {
            // Produce a serde error that says what was wrong.
            let err = serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(other)
                .err()
                .unwrap_or_else(|| serde::de::Error::custom("not an object"));
            return Err(DecodeError::Malformed(err));
        }
    };
    match obj.get("v").map(|v| v.as_u64()) {
        Some(Some(v)) if v == u64::from(PROTO_VERSION) => {}
        Some(Some(v)) => return Err(DecodeError::UnsupportedVersion(v)),
        Some(None) | None => {
            return Err(DecodeError::Malformed(serde::de::Error::custom(
                "missing or non-integer field `v`",
            )))
        }
    }
    let kind = match obj.get("type").and_then(|t| t.as_str()) {
        Some(k) => k.to_string(),
        None => return Err(DecodeError::MissingType),
    };
    let known = matches!(
        kind.as_str(),
        "hello" | "ready" | "heartbeat" | "exited" | "shutdown"
    );
    if !known {
        return Ok(Decoded::Unknown { kind });
    }
    serde_json::from_value(serde_json::Value::Object(obj))
        .map(Decoded::Message)
        .map_err(DecodeError::Malformed)
}

fn trim_eol(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

/// What [`LineReader::read_line`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLine {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line longer than the limit was discarded (up to and including its newline).
    TooLong,
    /// The reader would block (non-blocking source); call again later.
    WouldBlock,
    /// End of input. A final unterminated line is returned as a [`ReadLine::Line`] first.
    Eof,
}

/// A buffered line reader with a maximum line length. Oversized lines are skipped, not buffered,
/// so a misbehaving peer cannot make it allocate without bound. Works with blocking and
/// non-blocking sources.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
    eof: bool,
}

impl<R: Read> LineReader<R> {
    /// A reader with the limit [`MAX_LINE`].
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, MAX_LINE)
    }

    /// A reader with a custom limit.
    pub fn with_max(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max,
            discarding: false,
            eof: false,
        }
    }

    /// The underlying source.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next line. I/O errors other than `WouldBlock`/`Interrupted` are returned.
    pub fn read_line(&mut self) -> io::Result<ReadLine> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if self.discarding {
                    self.discarding = false;
                    return Ok(ReadLine::TooLong);
                }
                if line.len() > self.max {
                    return Ok(ReadLine::TooLong);
                }
                return Ok(ReadLine::Line(line));
            }
            if self.buf.len() > self.max {
                // No newline within the limit: drop what we have and skip to the next newline.
                self.buf.clear();
                self.discarding = true;
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(ReadLine::Eof);
                }
                let line = std::mem::take(&mut self.buf);
                if std::mem::take(&mut self.discarding) {
                    return Ok(ReadLine::TooLong);
                }
                return Ok(ReadLine::Line(line));
            }
            let mut chunk = [0u8; 4096];
            match self.inner.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadLine::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and decodes the next line; `Ok(None)` at end of input or when it would block.
    pub fn read_message(&mut self) -> io::Result<Option<Result<Decoded, DecodeError>>> {
        Ok(match self.read_line()? {
            ReadLine::Line(line) => Some(decode(&line)),
            ReadLine::TooLong => Some(Err(DecodeError::TooLong { max: self.max })),
            ReadLine::WouldBlock | ReadLine::Eof => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_versioned_lines() {
        let line = encode(&Message::Heartbeat { uptime_ms: 1500 });
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"v\":1,\"type\":\"heartbeat\",\"uptime_ms\":1500}\n"
        );
        assert_eq!(
            encode(&Message::Shutdown),
            b"{\"v\":1,\"type\":\"shutdown\"}\n"
        );
    }

    #[test]
    fn round_trips_every_message() {
        for msg in [
            Message::Hello { version: 1 },
            Message::Ready,
            Message::Heartbeat { uptime_ms: 7 },
            Message::Exited { code: -1 },
            Message::Shutdown,
        ] {
            assert_eq!(decode(&encode(&msg)).unwrap(), Decoded::Message(msg));
        }
    }

    #[test]
    fn tolerates_unknown_types() {
        let d = decode(br#"{"v":1,"type":"telemetry","cpu":3}"#).unwrap();
        assert_eq!(
            d,
            Decoded::Unknown {
                kind: "telemetry".into()
            }
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"v\":1}",
            b"{\"v\":1,\"type\":5}",
            b"{\"type\":\"ready\"}",
            b"{\"v\":2,\"type\":\"ready\"}",
            b"{\"v\":1,\"type\":\"exited\",\"code\":\"x\"}",
            b"\xff\xfe",
            b"",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            decode(b"{\"v\":9,\"type\":\"ready\"}"),
            Err(DecodeError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            decode(b"{\"v\":1}"),
            Err(DecodeError::MissingType)
        ));
    }

    #[test]
    fn skips_oversized_lines_and_keeps_going() {
        let mut input = Vec::new();
        input.extend_from_slice(&encode(&Message::Ready));
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.push(b'\n');
        input.extend_from_slice(&encode(&Message::Shutdown));
        input.extend_from_slice(b"{\"v\":1,\"type\":\"ready\"}"); // no final newline
        let mut r = LineReader::with_max(&input[..], 100);
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Ready)))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Err(DecodeError::TooLong { max: 100 }))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Shutdown)))
        ));
        assert!(matches!(
            r.read_message().unwrap(),
            Some(Ok(Decoded::Message(Message::Ready)))
        ));
        assert!(r.read_message().unwrap().is_none());
        assert_eq!(r.read_line().unwrap(), ReadLine::Eof);
    }

    #[test]
    fn oversized_line_through_the_decoder_is_an_error() {
        let mut line = b"{\"v\":1,\"type\":\"ready\",\"pad\":\"".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE));
        line.extend_from_slice(b"\"}");
        assert!(matches!(decode(&line), Err(DecodeError::TooLong { .. })));
    }
}
