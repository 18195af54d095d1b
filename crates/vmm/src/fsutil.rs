//! File helpers of the state directories: errors that name the file, atomic writes, fsyncs,
//! the end of a log, and removal that tolerates a writer finishing.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::VmmError;

/// Maps an I/O error on `path` to [`VmmError::State`].
pub fn state_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VmmError {
    let path = path.into();
    move |source| VmmError::State { path, source }
}

/// Writes `bytes` to `path` through `<path>.tmp`, fsynced, then renamed over `path`: a reader
/// sees the old contents or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VmmError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(state_err(&tmp))?;
    f.write_all(bytes).map_err(state_err(&tmp))?;
    f.sync_all().map_err(state_err(&tmp))?;
    fs::rename(&tmp, path).map_err(state_err(path))
}

/// The last three non-blank lines of a log, joined with ` | ` (empty if unreadable).
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Fsyncs a directory (so a rename or a new entry in it is durable).
pub fn fsync_dir(path: &Path) -> Result<(), VmmError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(state_err(path))
}

/// Removes a file; one that is not there is fine.
pub fn remove_file_if_exists(path: &Path) -> Result<(), VmmError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(path)(e)),
    }
}

/// Removes a directory tree, retrying a few times over 250 ms (a reaper thread may still be
/// writing into it); one that is not there is fine.
pub fn remove_dir_retrying(dir: &Path) -> Result<(), VmmError> {
    let mut attempt = 0;
    loop {
        match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) if attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(state_err(dir)(e)),
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_tails_logs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one\n\ntwo\nthree\n  \nfour\n").unwrap();
        assert!(!dir.path().join("f.tmp").exists());
        assert_eq!(log_tail(&p), "two | three | four");
        assert_eq!(log_tail(&dir.path().join("none")), "");
        remove_file_if_exists(&p).unwrap();
        remove_file_if_exists(&p).unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir_all(sub.join("a")).unwrap();
        remove_dir_retrying(&sub).unwrap();
        remove_dir_retrying(&sub).unwrap();
        assert!(!sub.exists());
    }
}
