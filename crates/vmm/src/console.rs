//! Reading a VM's captured serial console (`console.log`, written by the VMM): pieces of it
//! for callers, and what the guest said on it (ready, workload exit, power-off).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use firefleet_guest::console::{parse_line, ConsoleEvent};

use crate::error::VmmError;
use crate::fsutil::state_err;
use crate::vm::ConsoleChunk;

/// At most `max` bytes of the console at `path` from `offset`; nothing (and the same offset)
/// while the file does not exist yet.
pub fn read_chunk(path: &Path, offset: u64, max: usize) -> Result<ConsoleChunk, VmmError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(ConsoleChunk {
                data: Vec::new(),
                next_offset: offset,
            })
        }
        Err(e) => return Err(state_err(path)(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(state_err(path))?;
    let mut data = Vec::with_capacity(max.min(1 << 20));
    f.take(max as u64)
        .read_to_end(&mut data)
        .map_err(state_err(path))?;
    Ok(ConsoleChunk {
        next_offset: offset + data.len() as u64,
        data,
    })
}

/// What the guest's lines on the console said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestEvents {
    /// The guest's ready line.
    pub ready: bool,
    /// The workload's exit code (the last one).
    pub exit_code: Option<i32>,
    /// The guest's power-off line.
    pub powering_off: bool,
}

/// Scans the console at `path` for the guest's lines (none if the file does not exist).
pub fn guest_events(path: &Path) -> Result<GuestEvents, VmmError> {
    let console = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(state_err(path)(e)),
    };
    let mut ev = GuestEvents::default();
    for line in String::from_utf8_lossy(&console).lines() {
        match parse_line(line) {
            Some(ConsoleEvent::Ready) => ev.ready = true,
            Some(ConsoleEvent::ExitStatus(c)) => ev.exit_code = Some(c),
            Some(ConsoleEvent::PoweringOff) => ev.powering_off = true,
            None => {}
        }
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pieces_and_a_missing_console_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let none = read_chunk(&path, 7, 10).unwrap();
        assert!(none.data.is_empty());
        assert_eq!(none.next_offset, 7);
        assert_eq!(guest_events(&path).unwrap(), GuestEvents::default());
        fs::write(&path, b"hello world").unwrap();
        let c = read_chunk(&path, 6, 3).unwrap();
        assert_eq!((c.data.as_slice(), c.next_offset), (&b"wor"[..], 9));
        let c = read_chunk(&path, 9, 100).unwrap();
        assert_eq!((c.data.as_slice(), c.next_offset), (&b"ld"[..], 11));
    }

    #[test]
    fn finds_the_guests_lines() {
        use firefleet_guest::console::{EXIT_STATUS_PREFIX, POWERING_OFF_LINE, READY_LINE};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        fs::write(
            &path,
            format!("boot\n{READY_LINE}\nwork\n{EXIT_STATUS_PREFIX}3\n{POWERING_OFF_LINE}\n"),
        )
        .unwrap();
        let ev = guest_events(&path).unwrap();
        assert_eq!(
            ev,
            GuestEvents {
                ready: true,
                exit_code: Some(3),
                powering_off: true
            }
        );
    }
}
