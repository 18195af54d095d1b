//! A minimal blocking QMP client (JSON lines over a Unix socket).

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One QMP session, capabilities negotiated.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_value()?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no QMP greeting",
            ));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command; returns its `return` value. A QMP `error` becomes an `io::Error`.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> io::Result<serde_json::Value> {
        let line = Self::request(command, arguments)?;
        self.writer.write_all(&line)?;
        self.read_reply()
    }

    /// Hands QEMU an open file descriptor under `name` (QMP `getfd`, the descriptor travelling
    /// with the command as SCM_RIGHTS ancillary data), e.g. for a `fd:<name>` migration URI.
    /// QEMU keeps its own duplicate; the caller may close its copy afterwards.
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        let line = Self::request("getfd", Some(serde_json::json!({ "fdname": name })))?;
        let sent = send_with_fd(&self.writer, &line, fd.as_raw_fd())?;
        if sent < line.len() {
            self.writer.write_all(&line[sent..])?;
        }
        self.read_reply().map(|_| ())
    }

    /// Changes the read timeout (long-running commands, polling loops).
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    fn request(command: &str, arguments: Option<serde_json::Value>) -> io::Result<Vec<u8>> {
        let mut req = serde_json::json!({ "execute": command });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&req).map_err(io::Error::other)?;
        line.push(b'\n');
        Ok(line)
    }

    fn read_reply(&mut self) -> io::Result<serde_json::Value> {
        loop {
            let v = self.read_value()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e
                    .get("desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("unknown error");
                return Err(io::Error::other(format!("QMP error: {desc}")));
            }
            // Events ({"event": ...}) interleave with replies: skip them.
        }
    }

    fn read_value(&mut self) -> io::Result<serde_json::Value> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "QMP connection closed",
                ));
            }
            if line.len() > 1 << 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "QMP line too long",
                ));
            }
            if !line.trim().is_empty() {
                return serde_json::from_str(&line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// One `sendmsg` of `bytes` with `fd` attached as SCM_RIGHTS; returns the bytes written.
fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: i32) -> io::Result<usize> {
    let fd_len = std::mem::size_of::<libc::c_int>() as libc::c_uint;
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe { (libc::CMSG_SPACE(fd_len), libc::CMSG_LEN(fd_len)) };
    // u64 elements: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty message; every pointer set below outlives the
    // sendmsg call (iov, control and bytes live on this frame), and CMSG_FIRSTHDR points into
    // `control`, which has room for one header plus one int.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        loop {
            let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
