//! Snapshot archives: packing a snapshot directory into a tar stream, unpacking one that came
//! from another node, and reading the files of a snapshot directory without following links.
//!
//! An archive from elsewhere is hostile: it may name absolute paths or `..`, hold symbolic or
//! hard links, device nodes or FIFOs, claim owners and modes, repeat a name, or be far larger
//! than any snapshot. [`unpack`] reads it entry by entry, raw (no PAX, GNU long-name or sparse
//! processing: our archives need none), and writes only regular files, flat, with names from
//! the caller's allow-list, into a directory it creates. Every file is created by us (mode
//! 0600, `O_EXCL`, so never through a link); owners, modes and times in the archive are
//! ignored. The caller's [`UnpackLimits`] bound the entries, each entry's size and the total.
//! Anything else stops it with an [`ArchiveError`] naming the entry, and the directory is
//! removed.
//!
//! [`pack`] writes that format: one GNU header per regular file of a flat directory, owner 0,
//! mode 0600, time 0. It also reads the `./`-prefixed archives `tar -C DIR -cf - .` made.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

/// The largest snapshot manifest either backend reads (a launch config and a file list: a few
/// KiB), so a hostile one cannot make a restore allocate without bound.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Entries in all, directories included.
    pub max_entries: usize,
    /// Bytes of one file.
    pub max_entry_bytes: u64,
    /// Bytes of all files together.
    pub max_total_bytes: u64,
}

/// Why an entry of an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `/etc/passwd`.
    #[error("an absolute path")]
    AbsolutePath,
    /// `../x`, `a/../../x`.
    #[error("a `..` component")]
    ParentDir,
    /// `a/b`: snapshot directories are flat.
    #[error("a path below a directory (snapshots are flat)")]
    Nested,
    /// The name is not UTF-8.
    #[error("a name that is not UTF-8")]
    NotUtf8,
    /// A link, device node, FIFO, directory (other than the top), extension header, ...
    #[error("a {0}: only regular files are unpacked")]
    NotAFile(&'static str),
    /// Not a name the caller allows.
    #[error("not a file name of the snapshot format")]
    UnexpectedName,
    /// The same name twice.
    #[error("the name appears twice")]
    Duplicate,
    /// Larger than [`UnpackLimits::max_entry_bytes`].
    #[error("{size} bytes, more than the {limit} allowed per file")]
    EntryTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// It would bring the total past [`UnpackLimits::max_total_bytes`].
    #[error("{size} bytes, past the {limit} allowed in all")]
    TotalTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The archive ends inside the entry.
    #[error("truncated: {got} of {size} bytes")]
    Truncated {
        /// Bytes read.
        got: u64,
        /// Bytes its header announced.
        size: u64,
    },
}

/// Why packing or unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive could not be read (or is not a tar archive).
    #[error("reading the archive")]
    Read(#[source] io::Error),
    /// The archive could not be written.
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory to unpack into exists already.
    #[error("{} exists: archives are unpacked into a fresh directory", path.display())]
    DestinationExists {
        /// The directory.
        path: PathBuf,
    },
    /// An entry (of an archive, or a file of a directory to pack) was refused.
    #[error("archive entry {entry:?} refused")]
    Refused {
        /// The entry's name as the archive spells it (lossy UTF-8).
        entry: String,
        /// Why.
        #[source]
        why: Refusal,
    },
    /// More entries than [`UnpackLimits::max_entries`].
    #[error("more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
}

impl ArchiveError {
    /// The refusal, if an entry was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ArchiveError::Refused { why, .. } => Some(why),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(entry: &[u8], why: Refusal) -> ArchiveError {
    ArchiveError::Refused {
        entry: String::from_utf8_lossy(entry).into_owned(),
        why,
    }
}

/// The file name an entry's path denotes: `None` for the top directory (`.`, `./`), a single
/// plain name otherwise. Pure.
pub fn entry_name(raw: &[u8]) -> Result<Option<&str>, Refusal> {
    let path = std::str::from_utf8(raw).map_err(|_| Refusal::NotUtf8)?;
    if path.starts_with('/') {
        return Err(Refusal::AbsolutePath);
    }
    let mut name = None;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Refusal::ParentDir),
            p if name.is_none() => name = Some(p),
            _ => return Err(Refusal::Nested),
        }
    }
    Ok(name)
}

fn kind_name(t: EntryType) -> &'static str {
    match t {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::Directory => "directory",
        EntryType::Continuous => "contiguous file",
        EntryType::GNUSparse => "sparse file",
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long-name header",
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX extension header",
        EntryType::Regular => "file without a name",
        _ => "file of an unknown type",
    }
}

/// Unpacks `archive` into `dest` (created here, 0700; it must not exist): only regular files
/// whose names `allowed` accepts, within `limits`. Returns the bytes unpacked. On any error
/// `dest` is removed.
pub fn unpack(
    archive: impl Read,
    dest: &Path,
    allowed: &dyn Fn(&str) -> bool,
    limits: &UnpackLimits,
) -> Result<u64, ArchiveError> {
    match fs::DirBuilder::new().mode(0o700).create(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ArchiveError::DestinationExists {
                path: dest.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(dest)(e)),
    }
    unpack_into(archive, dest, allowed, limits).inspect_err(|_| {
        let _ = fs::remove_dir_all(dest);
    })
}

fn unpack_into(
    archive: impl Read,
    dest: &Path,
    allowed: &dyn Fn(&str) -> bool,
    limits: &UnpackLimits,
) -> Result<u64, ArchiveError> {
    let mut archive = tar::Archive::new(archive);
    let entries = archive.entries().map_err(ArchiveError::Read)?.raw(true);
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for (count, entry) in entries.enumerate() {
        if count >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let name = entry_name(&raw).map_err(|why| refused(&raw, why))?;
        let name = match (name, kind) {
            (None, EntryType::Directory) => continue,
            (Some(name), EntryType::Regular) => name,
            (_, kind) => return Err(refused(&raw, Refusal::NotAFile(kind_name(kind)))),
        };
        if !allowed(name) {
            return Err(refused(&raw, Refusal::UnexpectedName));
        }
        if !seen.insert(name.to_owned()) {
            return Err(refused(&raw, Refusal::Duplicate));
        }
        let size = entry.size();
        if size > limits.max_entry_bytes {
            let limit = limits.max_entry_bytes;
            return Err(refused(&raw, Refusal::EntryTooLarge { size, limit }));
        }
        if total.saturating_add(size) > limits.max_total_bytes {
            let limit = limits.max_total_bytes;
            return Err(refused(&raw, Refusal::TotalTooLarge { size, limit }));
        }
        let path = dest.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let got = copy_sparse(&mut (&mut entry).take(size), &mut file).map_err(|e| match e {
            CopyError::Read(e) => ArchiveError::Read(e),
            CopyError::Write(e) => io_err(&path)(e),
        })?;
        if got != size {
            return Err(refused(&raw, Refusal::Truncated { got, size }));
        }
        file.sync_all().map_err(io_err(&path))?;
        total += size;
    }
    File::open(dest)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dest))?;
    Ok(total)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `from` into the empty file `to`, leaving holes where whole blocks are zero (disk
/// images and guest memory are mostly zeros). Returns the bytes read.
fn copy_sparse(from: &mut impl Read, to: &mut File) -> Result<u64, CopyError> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut n = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let block = &buf[..filled];
        if block.iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(filled as i64))
                .map_err(CopyError::Write)?;
        } else {
            to.write_all(block).map_err(CopyError::Write)?;
        }
        n += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    to.set_len(n).map_err(CopyError::Write)?;
    Ok(n)
}

/// Packs the regular files of the flat directory `dir` whose names `allowed` accepts into a tar
/// stream on `out` (sorted by name; owner 0, mode 0600, time 0). Anything else in `dir` (a
/// link, a subdirectory, another name) is refused. Returns the bytes of the files.
pub fn pack(
    dir: &Path,
    out: impl Write,
    allowed: &dyn Fn(&str) -> bool,
) -> Result<u64, ArchiveError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        names.push(e.file_name());
    }
    names.sort();
    let mut builder = tar::Builder::new(out);
    let mut total = 0u64;
    for raw in names {
        let bytes = raw.as_encoded_bytes();
        let name = match raw.to_str() {
            Some(n) if allowed(n) => n,
            Some(_) => return Err(refused(bytes, Refusal::UnexpectedName)),
            None => return Err(refused(bytes, Refusal::NotUtf8)),
        };
        let path = dir.join(name);
        let file = open_regular(&path).map_err(|e| match e {
            LocalFileError::NotRegular(kind) => refused(bytes, Refusal::NotAFile(kind)),
            other => io_err(&path)(io::Error::other(other)),
        })?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_path(name).map_err(io_err(&path))?;
        header.set_size(size);
        header.set_mode(0o600);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append(&header, file.take(size))
            .map_err(io_err(&path))?;
        total += size;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ArchiveError::Write)?;
    Ok(total)
}

/// Why a file of a snapshot directory could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    /// The path is a link, directory, device, ... (named).
    #[error("a {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than allowed.
    #[error("larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Opening, `fstat` or reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Opens `path` for reading if it is a regular file, never following a symbolic link in its
/// last component (`O_NOFOLLOW`; a FIFO does not block the open), checked on the descriptor.
pub fn open_regular(path: &Path) -> Result<File, LocalFileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => LocalFileError::NotRegular("symbolic link"),
            _ => LocalFileError::Io(e),
        })?;
    let t = file.metadata()?.file_type();
    if t.is_file() {
        // Blocking again: the file may be handed to a VMM.
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(io::Error::from)?;
        Ok(file)
    } else if t.is_dir() {
        Err(LocalFileError::NotRegular("directory"))
    } else {
        Err(LocalFileError::NotRegular("special file"))
    }
}

/// Reads the regular file `path` (not through a link) if it holds at most `max` bytes.
pub fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, LocalFileError> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(LocalFileError::TooLarge { max });
    }
    Ok(bytes)
}

/// Copies the regular file `from` (not through a link) over `to` (created 0600, or truncated)
/// and fsyncs the copy. Returns the bytes copied.
pub fn copy_regular(from: &Path, to: &Path) -> Result<u64, LocalFileError> {
    let mut src = open_regular(from)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    let n = io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests;
