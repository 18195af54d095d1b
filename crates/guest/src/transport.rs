//! The byte pipes the channel runs over: the virtio-serial port `org.firefleet.agent` (QEMU),
//! else an AF_VSOCK stream the guest connects to the host on (CID 2, port [`VSOCK_PORT`];
//! Firecracker forwards it to the host Unix socket `<uds>_1024`).
//!
//! Both are non-blocking fds. A virtio-serial port stays open across host (re)connections: poll
//! reports `POLLHUP` while no host is connected and reads return end-of-file after a disconnect.
//! A vsock stream ends with its connection; the channel connects again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firefleet_guest::AGENT_PORT_NAME;

/// The vsock port the guest connects to on the host.
pub const VSOCK_PORT: u32 = 1024;

/// Which kind of pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// virtio-serial port: survives host reconnections.
    Serial,
    /// vsock stream: one connection.
    Vsock,
}

/// An open pipe to the host.
pub struct Link {
    pub kind: Kind,
    pub file: File,
}

/// What [`Link::poll`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    /// No host on the other end (serial: not connected; vsock: connection gone).
    pub hangup: bool,
}

/// How [`Link::write_line`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The whole line.
    All,
    /// Nothing (would block, or no host): try again later.
    Nothing,
    /// Part of it; the line was terminated early and is lost.
    Cut,
}

impl Link {
    /// Waits up to `timeout_ms` for input (or a hang-up) on the link, or for `wake` (an
    /// eventfd, drained here) to be signalled.
    pub fn poll(&self, timeout_ms: libc::c_int, wake: Option<std::os::fd::RawFd>) -> Ready {
        let mut pfds = [
            libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
        if rc <= 0 {
            return Ready::default();
        }
        if let Some(fd) = wake.filter(|_| pfds[1].revents & libc::POLLIN != 0) {
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into a live buffer from the eventfd (non-blocking).
            let _ = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        }
        let pfd = &pfds[0];
        Ready {
            readable: pfd.revents & libc::POLLIN != 0,
            hangup: pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        }
    }

    fn wait_writable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        rc > 0 && pfd.revents & libc::POLLOUT != 0
    }

    /// Writes one line. If nothing can be written at once and `patience` is zero, writes nothing;
    /// otherwise waits up to `patience` for room (virtio-serial takes at most 32 KiB per write).
    pub fn write_line(&mut self, line: &[u8], patience: Duration) -> Written {
        let deadline = Instant::now() + patience;
        let mut done = 0;
        while done < line.len() {
            match (&self.file).write(&line[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if done == 0 && patience.is_zero() {
                        return Written::Nothing;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !self.wait_writable(left) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if done == line.len() {
            Written::All
        } else if done == 0 {
            Written::Nothing
        } else {
            // End the broken line so the next one starts clean on the host.
            let _ = (&self.file).write(b"\n");
            Written::Cut
        }
    }
}

impl io::Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// `/dev/vportNpM` of the agent port, if the device exists.
pub fn find_serial_port() -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == AGENT_PORT_NAME {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

pub fn open_serial(path: &Path) -> io::Result<Link> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    Ok(Link {
        kind: Kind::Serial,
        file,
    })
}

/// Connects to the host (CID 2) on `port`; the stream is made non-blocking once connected.
pub fn connect_vsock(port: u32) -> io::Result<Link> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid sockaddr_vm.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl on our own fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(Link {
        kind: Kind::Vsock,
        file: File::from(fd),
    })
}

/// Whether this kernel has AF_VSOCK (the `vsock` module is loaded).
pub fn vsock_available() -> bool {
    // SAFETY: plain socket(2), closed at once.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return false;
    }
    // SAFETY: raw is ours.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
    true
}
