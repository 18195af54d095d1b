//! `invoke` requests: the function runtime. Each invocation runs in a thread of its own (through
//! [`exec::spawn_worker`], so invocations never wait for one another, nor for `exec`s), with its
//! handler:
//! - a command, run per invocation exactly like an `exec` ([`exec::run_command`]: own process
//!   group, killed with it at the timeout) with the body on stdin; its stdout is the response,
//!   status 200 on exit 0, else 500 (stderr comes back too);
//! - an HTTP port: the body is POSTed to `127.0.0.1:<port><path>` where the VM's workload
//!   listens ([`http::post`]); its status and body come back.
//!
//! Bodies are limited to [`MAX_BODY`] bytes both ways (see [`proto`]): a larger request is
//! refused with an `error`, a larger response is cut and flagged `truncated`.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use firefleet_guest::proto::{self, InvokeHandler, InvokeResult, Message, MAX_BODY, MAX_LINE};

use crate::exec::{self, millis, OUTPUT_BUDGET};
use crate::http;

/// Status when the handler could not be reached or run.
const BAD_GATEWAY: u16 = 502;
/// Status when the handler ran past its timeout.
const GATEWAY_TIMEOUT: u16 = 504;

/// Handles one invoke request in a thread of its own; the answer goes to `reply`.
pub fn spawn_invoke(
    id: u64,
    handler: InvokeHandler,
    body_b64: String,
    timeout: Duration,
    reply: exec::Replies,
) {
    exec::spawn_worker(id, "invoke", reply, move || {
        run(id, &handler, &body_b64, timeout)
    });
}

fn run(id: u64, handler: &InvokeHandler, body_b64: &str, timeout: Duration) -> Message {
    let started = Instant::now();
    let Ok(body) = STANDARD.decode(body_b64) else {
        return exec::error(id, "body_b64 is not base64");
    };
    if body.len() > MAX_BODY {
        return exec::error(
            id,
            &format!(
                "the request body is {} bytes, over the {MAX_BODY}-byte limit",
                body.len()
            ),
        );
    }
    let result = match handler {
        InvokeHandler::Command { argv } => command(id, argv, body, timeout),
        InvokeHandler::Http { port, path } => {
            if *port == 0 {
                return exec::error(id, "port 0 is not a port");
            }
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return exec::error(
                    id,
                    &format!(
                        "bad path {path:?}: it must start with / and hold no spaces or \
                         control characters"
                    ),
                );
            }
            forward(id, *port, path, &body, started + timeout, timeout)
        }
    };
    finish(InvokeResult {
        duration_ms: millis(started.elapsed()),
        ..result
    })
}

/// Runs the command with the body on stdin.
fn command(id: u64, argv: &[String], body: Vec<u8>, timeout: Duration) -> InvokeResult {
    let o = match exec::run_command(argv, timeout, Some(body)) {
        Ok(o) => o,
        Err(e) => {
            return InvokeResult {
                id,
                status: 500,
                error: Some(e),
                ..Default::default()
            }
        }
    };
    let mut out = o.stdout.data;
    let mut truncated = o.stdout.truncated || o.stderr.truncated || out.len() > MAX_BODY;
    out.truncate(MAX_BODY);
    let mut err = o.stderr.data;
    let room = OUTPUT_BUDGET.saturating_sub(out.len());
    truncated |= err.len() > room;
    err.truncate(room);
    let (status, error) = if o.timed_out {
        (
            GATEWAY_TIMEOUT,
            Some(format!(
                "the command ran past its timeout of {} ms and was killed",
                millis(timeout)
            )),
        )
    } else if o.exit_code == 0 {
        (200, None)
    } else {
        (500, None)
    };
    InvokeResult {
        id,
        status,
        body_b64: STANDARD.encode(&out),
        error,
        exit_code: Some(o.exit_code),
        stderr_b64: Some(STANDARD.encode(&err)),
        duration_ms: 0,
        timed_out: o.timed_out,
        truncated,
    }
}

/// POSTs the body to the workload.
fn forward(
    id: u64,
    port: u16,
    path: &str,
    body: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> InvokeResult {
    let headers = [("X-Firefleet-Request-Id", id.to_string())];
    match http::post(port, path, &headers, body, deadline, MAX_BODY) {
        Ok(r) => InvokeResult {
            id,
            status: r.status,
            body_b64: STANDARD.encode(&r.body),
            truncated: r.truncated,
            ..Default::default()
        },
        Err(http::HttpError::TimedOut) => InvokeResult {
            id,
            status: GATEWAY_TIMEOUT,
            error: Some(format!(
                "no complete answer from 127.0.0.1:{port} within the timeout of {} ms",
                millis(timeout)
            )),
            timed_out: true,
            ..Default::default()
        },
        Err(e) => InvokeResult {
            id,
            status: BAD_GATEWAY,
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

/// The answer, made to fit one protocol line whatever happened.
fn finish(mut r: InvokeResult) -> Message {
    if let Some(e) = r.error.as_mut() {
        if e.len() > 1024 {
            let mut cut = 1024;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
    }
    if proto::encode(&Message::InvokeResult(r.clone())).len() > MAX_LINE {
        // Cannot happen with the budgets above; be safe anyway.
        r.body_b64.clear();
        r.stderr_b64 = None;
        r.truncated = true;
    }
    Message::InvokeResult(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_answers_still_fit_a_line() {
        let r = InvokeResult {
            id: 1,
            status: 200,
            body_b64: "A".repeat(MAX_LINE),
            error: Some("é".repeat(2000)),
            ..Default::default()
        };
        let Message::InvokeResult(r) = finish(r) else {
            panic!("not a result");
        };
        assert!(r.truncated && r.body_b64.is_empty());
        assert!(r.error.is_some_and(|e| e.len() <= 1024));
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let http = |path: &str, port| InvokeHandler::Http {
            port,
            path: path.into(),
        };
        let t = Duration::from_millis(100);
        for (handler, body, want) in [
            (http("/", 80), "!!", "not base64"),
            (http("/", 0), "", "port 0"),
            (http("no-slash", 80), "", "bad path"),
            (http("/a b", 80), "", "bad path"),
            (
                http("/", 80),
                &STANDARD.encode(vec![0u8; MAX_BODY + 1]),
                "over the 32768-byte limit",
            ),
        ] {
            match run(9, &handler, body, t) {
                Message::Error { id: 9, message } => assert!(message.contains(want), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn forwards_to_a_local_port_and_names_a_refused_one() {
        // Bind and drop: a port that (very likely) nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let handler = InvokeHandler::Http {
            port,
            path: "/x".into(),
        };
        let Message::InvokeResult(r) = run(3, &handler, "", Duration::from_secs(2)) else {
            panic!("not a result");
        };
        assert_eq!(r.status, BAD_GATEWAY);
        let e = r.error.unwrap();
        assert!(
            e.contains("refused") && e.contains(&port.to_string()),
            "{e}"
        );
    }
}
