//! Finding a VMM process again: pid + start time from /proc, so a reused pid is never mistaken
//! for ours.

use std::fs;
use std::io;
use std::path::Path;

/// The identity of a process: pid and start time (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// State and start time of a pid from /proc/PID/stat, or None if there is no such process.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses /proc/PID/stat: the command may contain spaces and parentheses, so split after the
/// last `)`. Fields after it start at field 3 (state); start time is field 22.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessId {
    /// The identity of a live pid now.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// The process exists (zombie or not) and is the same one.
    pub fn exists(&self) -> bool {
        matches!(stat(self.pid), Some((_, t)) if t == self.start_time)
    }

    /// The process exists, is the same one and is not a zombie.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, t)) if t == self.start_time && s != 'Z' && s != 'X')
    }

    /// Sends a signal if (and only if) the pid is still this process.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.exists() {
            return false;
        }
        // SAFETY: kill(2) on a pid we just verified by start time; worst case a benign race
        // within microseconds of its exit.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }

    /// `"<pid> <start_time>\n"`, the pid file format.
    pub fn to_file_contents(&self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Parses the pid file format.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// Reads a pid file; `Ok(None)` if it does not exist or is unreadable garbage.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(t) => Ok(Self::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 100 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn knows_itself_and_round_trips_the_pid_file() {
        let me = ProcessId::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !other.exists(),
            "a different start time is a different process"
        );
        assert_eq!(ProcessId::parse(&me.to_file_contents()), Some(me));
        assert_eq!(ProcessId::parse("12"), None);
    }
}
