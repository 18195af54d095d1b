//! `firefleet-guest`: PID 1 in the microVM's initramfs.
//!
//! Boot: mount /proc, /sys, /dev, /tmp; load the modules listed in /lib/modules/order; read the
//! config from `firefleet.config=` on the kernel command line; open the agent port; print
//! `firefleet-guest ready`; run the workload if any. Stop (workload exit, `shutdown` on the
//! channel, SIGTERM/SIGINT/SIGUSR1/SIGUSR2/SIGPWR to PID 1): SIGTERM everyone, SIGKILL after a
//! grace, sync, print `firefleet-guest powering off`, `reboot(RB_POWER_OFF)`.
//! It reaps every zombie (handing the status of `exec`'d children to their handlers, see
//! [`exec`]), and never panics or exits on bad input (PID 1 exiting panics the kernel).
//! The channel ([`channel`]) runs in its own thread over virtio-serial or vsock ([`transport`]).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use firefleet_guest::config::GuestConfig;
use firefleet_guest::console::{EXIT_STATUS_PREFIX, POWERING_OFF_LINE, READY_LINE};

mod cgroup;
mod channel;
mod disks;
mod exec;
mod http;
mod invoke;
mod net;
mod telemetry;
mod transport;

use channel::Outgoing;

const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";
const TERM_GRACE: Duration = Duration::from_secs(2);
const STOP_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

/// What wakes the main loop.
enum Event {
    Signal(libc::c_int),
    Shutdown,
    PowerButton,
}

fn log(msg: &str) {
    let mut out = io::stdout().lock();
    // Nothing sensible to do if the console is gone.
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn warn(what: &str, err: impl std::fmt::Display) {
    log(&format!("firefleet-guest: {what}: {err}"));
}

fn main() {
    let start = Instant::now();
    let sigset = block_signals();
    // Edition 2021: set_var is safe; we are single threaded here.
    std::env::set_var("PATH", PATH);
    std::env::set_var("HOME", "/");
    std::env::set_var("TERM", "linux");

    mount_filesystems();
    reopen_console();
    load_modules(Path::new("/lib/modules"));
    match cgroup::setup() {
        Ok(missing) => {
            for m in missing {
                warn("workloads' cgroup: not set", m);
            }
        }
        Err(e) => warn("no workloads' cgroup, workloads run unconfined", e),
    }
    // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
    // SAFETY: reboot(2) with CAD_OFF only changes a kernel flag.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };

    let config = match fs::read_to_string("/proc/cmdline") {
        Ok(line) => match GuestConfig::from_kernel_cmdline(&line) {
            Ok(c) => c,
            Err(e) => {
                warn("no usable config, idling", error_chain(&e));
                GuestConfig::default()
            }
        },
        Err(e) => {
            warn("reading /proc/cmdline", e);
            GuestConfig::default()
        }
    };

    let (events_tx, events_rx) = mpsc::channel();
    spawn_signal_thread(sigset, events_tx.clone());
    spawn_power_button_thread(events_tx.clone());
    let channel = channel::spawn(events_tx, start, config.vm_id.clone());

    let root = match disks::setup(&config.disks, &mut |w| warn("disks", w)) {
        Ok(root) => root,
        Err(e) => {
            warn("disk setup failed, powering off", e);
            power_off(&channel);
        }
    };

    net::configure(config.net.as_ref());
    log(READY_LINE);

    let workload = config
        .cmd
        .as_ref()
        .and_then(|cmd| spawn_workload(cmd, root.as_deref()));
    if config.cmd.is_some() && workload.is_none() {
        // Could not start: report it like a shell would.
        finish_workload(127, &channel);
        power_off(&channel);
    }
    main_loop(events_rx, workload, &channel);
}

fn main_loop(
    events: Receiver<Event>,
    workload: Option<libc::pid_t>,
    channel: &Sender<Outgoing>,
) -> ! {
    loop {
        let stop = match events.recv_timeout(Duration::from_secs(1)) {
            Ok(Event::Signal(sig)) if sig == libc::SIGCHLD => false,
            Ok(Event::Signal(sig)) => {
                log(&format!("firefleet-guest: signal {sig}, stopping"));
                true
            }
            Ok(Event::Shutdown) => {
                log("firefleet-guest: shutdown requested by the host");
                true
            }
            Ok(Event::PowerButton) => {
                log("firefleet-guest: power button pressed");
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        };
        for (pid, code) in reap_all() {
            // An exec'd child: its status goes to the exec handler waiting for it.
            if exec::deliver(pid, code) {
                continue;
            }
            if Some(pid) == workload {
                finish_workload(code, channel);
                power_off(channel);
            }
        }
        if stop {
            power_off_reporting(channel, workload);
        }
    }
}

fn finish_workload(code: i32, channel: &Sender<Outgoing>) {
    log(&format!("{EXIT_STATUS_PREFIX}{code}"));
    let _ = channel.send(Outgoing::Exited(code));
}

/// Stops everything; if the workload is reaped while stopping, its status is reported first.
fn power_off_reporting(channel: &Sender<Outgoing>, workload: Option<libc::pid_t>) -> ! {
    let reaped = terminate_all();
    if let Some(code) = workload.and_then(|w| reaped.iter().find(|(p, _)| *p == w).map(|r| r.1)) {
        finish_workload(code, channel);
    }
    final_power_off(channel)
}

fn power_off(channel: &Sender<Outgoing>) -> ! {
    terminate_all();
    final_power_off(channel)
}

fn final_power_off(channel: &Sender<Outgoing>) -> ! {
    let (ack_tx, ack_rx) = mpsc::channel();
    if channel.send(Outgoing::Flush(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(Duration::from_millis(500));
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    log(POWERING_OFF_LINE);
    loop {
        // SAFETY: reboot(2) powers the machine off; it only returns on error.
        let rc = unsafe { libc::reboot(libc::RB_POWER_OFF) };
        warn("reboot(RB_POWER_OFF) failed", io::Error::last_os_error());
        let _ = rc;
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// SIGTERM to every process, reap until none is left or the grace ends, then SIGKILL.
fn terminate_all() -> Vec<(libc::pid_t, i32)> {
    let mut reaped = Vec::new();
    // SAFETY: kill(-1) from PID 1 signals every process but itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        let (pids, none_left) = reap();
        reaped.extend(pids);
        if none_left {
            return reaped;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (pids, none_left) = reap();
        reaped.extend(pids);
        if none_left || Instant::now() >= deadline {
            return reaped;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps every zombie; returns (pid, exit code or 128+signal).
fn reap_all() -> Vec<(libc::pid_t, i32)> {
    reap().0
}

/// Reaps every zombie; also says whether no children are left at all.
fn reap() -> (Vec<(libc::pid_t, i32)>, bool) {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return (out, false);
        }
        if pid < 0 {
            let none_left = io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
            return (out, none_left);
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            continue;
        };
        out.push((pid, code));
    }
}

fn spawn_workload(cmd: &[String], root: Option<&Path>) -> Option<libc::pid_t> {
    let Some((prog, args)) = cmd.split_first() else {
        warn("workload", "empty command");
        return None;
    };
    let mut command = Command::new(prog);
    command.args(args).stdin(Stdio::null()).env("PATH", PATH);
    // SAFETY: only async-signal-safe calls between fork and exec. PID 1 blocks the stop signals
    // for its signal thread; the workload must start with an empty mask or SIGTERM cannot
    // reach it.
    unsafe {
        command.pre_exec(exec::child_defaults);
    }
    if let Some(root) = root {
        if let Err(e) = disks::chroot_workload(&mut command, root) {
            warn(&format!("chroot into {}", root.display()), e);
            return None;
        }
    }
    match command.spawn() {
        // Dropping the Child neither waits nor kills; we reap it with waitpid(-1).
        Ok(child) => i32::try_from(child.id()).ok(),
        Err(e) => {
            warn(&format!("starting {prog}"), e);
            None
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then masking this (only) thread; threads spawned
    // later inherit the mask, so only the signal thread receives these signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_signal_thread(set: libc::sigset_t, tx: Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: set is a valid, initialised sigset; sig is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 && tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        });
    if let Err(e) = spawned {
        warn("starting the signal thread", e);
    }
}

fn mount_filesystems() {
    for (src, target, fstype, flags) in [
        (
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        ),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID),
        ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV),
    ] {
        if let Err(e) = fs::create_dir_all(target) {
            warn(&format!("mkdir {target}"), e);
        }
        if let Err(e) = mount_fs(src, target, fstype, flags) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                warn(&format!("mount {target}"), e);
            }
        }
    }
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (src, target, fstype) = (c(src)?, c(target)?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points fds 0/1/2 at /dev/console from devtmpfs (the initramfs node may be missing).
fn reopen_console() {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    {
        Ok(f) => {
            let fd = f.into_raw_fd();
            for target in 0..3 {
                // SAFETY: fd is open; dup2 onto the standard descriptors.
                unsafe { libc::dup2(fd, target) };
            }
            if fd > 2 {
                // SAFETY: fd is ours and no longer needed.
                unsafe { libc::close(fd) };
            }
        }
        Err(e) => warn("opening /dev/console", e),
    }
}

/// Loads `dir/<name>` for each name in `dir/order`, with finit_module(2).
fn load_modules(dir: &Path) {
    let order = match fs::read_to_string(dir.join("order")) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => return warn("reading /lib/modules/order", e),
    };
    for name in order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if name.contains('/') {
            warn("module order", format!("skipping {name:?}"));
            continue;
        }
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn(&format!("opening {}", path.display()), e);
                continue;
            }
        };
        // SAFETY: finit_module with a valid fd and an empty NUL-terminated parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                c"".as_ptr(),
                0 as libc::c_int,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                warn(&format!("loading {name}"), err);
            }
        }
    }
}

/// The input device of the ACPI power button (module `button`), if any.
fn find_power_button() -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/input").ok()?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if !file_name.to_string_lossy().starts_with("event") {
            continue;
        }
        let name = fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if name.trim() == "Power Button" {
            return Some(Path::new("/dev/input").join(file_name));
        }
    }
    None
}

/// Turns a power-button press (QEMU `system_powerdown`) into a stop request.
fn spawn_power_button_thread(events: Sender<Event>) {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let spawned = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            // The device appears once `button` and `evdev` are loaded; give it a few seconds.
            let mut path = None;
            for _ in 0..50 {
                path = find_power_button();
                if path.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let Some(path) = path else {
                return;
            };
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => return warn(&format!("opening {}", path.display()), e),
            };
            // struct input_event on x86-64: timeval (16 bytes), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            loop {
                if let Err(e) = io::Read::read_exact(&mut file, &mut ev) {
                    return warn("reading the power button", e);
                }
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    let _ = events.send(Event::PowerButton);
                }
            }
        });
    if let Err(e) = spawned {
        warn("starting the power button thread", e);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
