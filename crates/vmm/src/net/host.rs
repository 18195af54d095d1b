//! The side effects of node networking, behind a trait: running `ip`, `nft` and `tc`, looking
//! at links and writing sysctls. [`SystemHost`] does it for real; unit tests use a fake.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::NetError;

/// What [`super::NodeNetwork`] does to the host.
pub trait Host: Send + Sync {
    /// Runs `program args...` (with `stdin` fed in if given); stdout on success, else
    /// [`NetError::Command`] with the command line and its stderr.
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<String, NetError>;
    /// Whether a network interface of that name exists.
    fn link_exists(&self, name: &str) -> bool;
    /// Writes a value under /proc/sys (path relative to it, e.g. `net/ipv4/conf/br0/forwarding`).
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError>;
}

/// The real host: `ip`, `nft` and `tc` from PATH, `/sys/class/net`, `/proc/sys`.
#[derive(Debug, Clone, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<String, NetError> {
        let command = std::iter::once(program.to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_err = |source| NetError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as the tool's own failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NetError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn link_exists(&self, name: &str) -> bool {
        !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).map_err(|source| NetError::State { path, source })
    }
}
