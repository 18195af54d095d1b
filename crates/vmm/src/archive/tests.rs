use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use super::*;

const LIMITS: UnpackLimits = UnpackLimits {
    max_entries: 8,
    max_entry_bytes: 1 << 20,
    max_total_bytes: 4 << 20,
};

fn allowed(name: &str) -> bool {
    matches!(name, "vmstate" | "memory" | "manifest.json")
}

/// A tar archive written header by header, names and link targets as raw bytes (the `tar`
/// crate's own setters refuse the hostile ones).
#[derive(Default)]
struct Hostile(Vec<u8>);

impl Hostile {
    fn entry(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o4777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, b"", data)
    }

    /// The archive with its two end blocks.
    fn done(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn unpack_bytes(
    archive: &[u8],
    limits: &UnpackLimits,
) -> (tempfile::TempDir, PathBuf, Result<u64, ArchiveError>) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("snap");
    let r = unpack(archive, &dest, &allowed, limits);
    (tmp, dest, r)
}

/// Unpacks `archive`, expecting `why` for the entry `entry`, and no directory left behind.
fn refused_with(archive: &[u8], entry: &str, why: Refusal) {
    let (_tmp, dest, r) = unpack_bytes(archive, &LIMITS);
    let e = r.unwrap_err();
    assert_eq!(e.refusal(), Some(&why), "{e:?}");
    assert!(e.to_string().contains(&format!("{entry:?}")), "{e}");
    assert!(!dest.exists(), "the partial directory is removed");
}

#[test]
fn a_packed_snapshot_unpacks_to_the_same_files_created_by_us() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("vmstate"), b"state").unwrap();
    fs::write(src.join("manifest.json"), b"{}").unwrap();
    // Mostly zeros, with data at both ends: holes must read back as zeros.
    let mut memory = vec![0u8; 300 * 1024];
    memory[0] = 1;
    memory[300 * 1024 - 1] = 2;
    fs::write(src.join("memory"), &memory).unwrap();
    fs::set_permissions(src.join("memory"), fs::Permissions::from_mode(0o4755)).unwrap();

    let mut archive = Vec::new();
    assert_eq!(
        pack(&src, &mut archive, &allowed).unwrap(),
        5 + 2 + 300 * 1024
    );
    let dest = tmp.path().join("dest");
    assert_eq!(
        unpack(&archive[..], &dest, &allowed, &LIMITS).unwrap(),
        5 + 2 + 300 * 1024
    );
    assert_eq!(fs::read(dest.join("vmstate")).unwrap(), b"state");
    assert_eq!(fs::read(dest.join("memory")).unwrap(), memory);
    let md = fs::metadata(dest.join("memory")).unwrap();
    assert_eq!(
        md.mode() & 0o7777,
        0o600,
        "modes from the archive are ignored"
    );
    assert_eq!(md.uid(), nix::unistd::getuid().as_raw());
    assert!(md.blocks() * 512 < 300 * 1024, "zero blocks stay holes");
}

#[test]
fn archives_made_by_the_tar_command_still_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("vmstate"), b"state").unwrap();
    fs::write(src.join("memory"), b"mem").unwrap();
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf", "-", "."])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("no tar command: skipped");
        return;
    };
    let dest = tmp.path().join("dest");
    unpack(&out.stdout[..], &dest, &allowed, &LIMITS).unwrap();
    assert_eq!(fs::read(dest.join("memory")).unwrap(), b"mem");
}

#[test]
fn absolute_paths_are_refused() {
    let a = Hostile::default()
        .file("/etc/passwd", b"root::0:0::/:/bin/sh\n")
        .done();
    refused_with(&a, "/etc/passwd", Refusal::AbsolutePath);
}

#[test]
fn parent_components_are_refused() {
    for name in ["../memory", "./../memory", "a/../../memory", ".."] {
        let a = Hostile::default().file(name, b"x").done();
        refused_with(&a, name, Refusal::ParentDir);
    }
}

#[test]
fn paths_below_a_directory_and_directories_are_refused() {
    let a = Hostile::default().file("sub/memory", b"x").done();
    refused_with(&a, "sub/memory", Refusal::Nested);
    let a = Hostile::default()
        .entry(b"sub/", EntryType::Directory, b"", b"")
        .done();
    refused_with(&a, "sub/", Refusal::NotAFile("directory"));
}

#[test]
fn a_symlink_then_a_file_written_through_it_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("passwd");
    fs::write(&victim, b"untouched").unwrap();
    let a = Hostile::default()
        .entry(
            b"memory",
            EntryType::Symlink,
            victim.as_os_str().as_encoded_bytes(),
            b"",
        )
        .file("memory", b"owned")
        .done();
    refused_with(&a, "memory", Refusal::NotAFile("symbolic link"));
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
}

#[test]
fn hard_links_devices_fifos_and_extension_headers_are_refused() {
    let cases: [(EntryType, &[u8], &str); 5] = [
        (EntryType::Link, b"/etc/passwd", "hard link"),
        (EntryType::Char, b"", "character device"),
        (EntryType::Block, b"", "block device"),
        (EntryType::Fifo, b"", "FIFO"),
        (EntryType::GNUSparse, b"", "sparse file"),
    ];
    for (kind, link, what) in cases {
        let a = Hostile::default().entry(b"memory", kind, link, b"").done();
        refused_with(&a, "memory", Refusal::NotAFile(what));
    }
    let a = Hostile::default()
        .entry(
            b"pax",
            EntryType::XHeader,
            b"",
            b"30 path=../../../etc/passwd\n",
        )
        .file("memory", b"x")
        .done();
    refused_with(&a, "pax", Refusal::NotAFile("PAX extension header"));
}

#[test]
fn names_the_format_does_not_define_are_refused() {
    let a = Hostile::default()
        .file("vmstate", b"s")
        .file("authorized_keys", b"k")
        .done();
    refused_with(&a, "authorized_keys", Refusal::UnexpectedName);
}

#[test]
fn a_name_given_twice_is_refused() {
    let a = Hostile::default()
        .file("memory", b"a")
        .file("./memory", b"b")
        .done();
    refused_with(&a, "./memory", Refusal::Duplicate);
}

#[test]
fn oversized_entries_and_totals_are_refused_before_writing() {
    let limits = UnpackLimits {
        max_entries: 8,
        max_entry_bytes: 10,
        max_total_bytes: 15,
    };
    let a = Hostile::default().file("memory", &[1; 11]).done();
    let (_t, dest, r) = unpack_bytes(&a, &limits);
    let e = r.unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(&Refusal::EntryTooLarge {
            size: 11,
            limit: 10
        })
    );
    assert!(!dest.exists());

    let a = Hostile::default()
        .file("memory", &[1; 8])
        .file("vmstate", &[1; 8])
        .done();
    let (_t, _, r) = unpack_bytes(&a, &limits);
    let e = r.unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(&Refusal::TotalTooLarge { size: 8, limit: 15 })
    );
    assert!(e.to_string().contains("\"vmstate\""), "{e}");
}

#[test]
fn too_many_entries_are_refused() {
    let limits = UnpackLimits {
        max_entries: 3,
        ..LIMITS
    };
    let mut a = Hostile::default().entry(b"./", EntryType::Directory, b"", b"");
    for name in ["memory", "vmstate", "manifest.json"] {
        a = a.file(name, b"x");
    }
    let (_t, dest, r) = unpack_bytes(&a.done(), &limits);
    assert!(
        matches!(r, Err(ArchiveError::TooManyEntries { limit: 3 })),
        "{r:?}"
    );
    assert!(!dest.exists());
}

#[test]
fn a_truncated_archive_is_refused() {
    let mut a = Hostile::default().file("memory", &[7; 2000]).done();
    a.truncate(512 + 1000);
    let (_t, dest, r) = unpack_bytes(&a, &LIMITS);
    assert!(r.is_err(), "{r:?}");
    assert!(!dest.exists());
}

#[test]
fn an_existing_destination_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Hostile::default().file("memory", b"x").done();
    let e = unpack(&a[..], tmp.path(), &allowed, &LIMITS).unwrap_err();
    assert!(matches!(e, ArchiveError::DestinationExists { .. }), "{e:?}");
    assert!(tmp.path().exists(), "not removed: it was not ours");
}

#[test]
fn packing_refuses_links_and_foreign_names() {
    let tmp = tempfile::tempdir().unwrap();
    symlink("/etc/passwd", tmp.path().join("memory")).unwrap();
    let e = pack(tmp.path(), Vec::new(), &allowed).unwrap_err();
    assert_eq!(e.refusal(), Some(&Refusal::NotAFile("symbolic link")));
    fs::remove_file(tmp.path().join("memory")).unwrap();
    fs::write(tmp.path().join("notes"), b"x").unwrap();
    let e = pack(tmp.path(), Vec::new(), &allowed).unwrap_err();
    assert_eq!(e.refusal(), Some(&Refusal::UnexpectedName));
}

#[test]
fn local_reads_do_not_follow_links_and_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::write(&real, b"0123456789").unwrap();
    let link = tmp.path().join("link");
    symlink(&real, &link).unwrap();
    assert!(matches!(
        read_small(&link, 100),
        Err(LocalFileError::NotRegular("symbolic link"))
    ));
    assert!(matches!(
        read_small(&real, 9),
        Err(LocalFileError::TooLarge { max: 9 })
    ));
    assert_eq!(read_small(&real, 10).unwrap(), b"0123456789");
    assert!(matches!(
        copy_regular(&link, &tmp.path().join("c")),
        Err(LocalFileError::NotRegular(_))
    ));
    let copy = tmp.path().join("c");
    assert_eq!(copy_regular(&real, &copy).unwrap(), 10);
    assert_eq!(fs::metadata(&copy).unwrap().mode() & 0o777, 0o600);
    assert!(matches!(
        open_regular(tmp.path()),
        Err(LocalFileError::NotRegular("directory"))
    ));
}

#[test]
fn entry_names_are_single_plain_components() {
    assert_eq!(entry_name(b"./memory"), Ok(Some("memory")));
    assert_eq!(entry_name(b"memory"), Ok(Some("memory")));
    assert_eq!(entry_name(b"./"), Ok(None));
    assert_eq!(entry_name(b"."), Ok(None));
    assert_eq!(entry_name(b"/memory"), Err(Refusal::AbsolutePath));
    assert_eq!(entry_name(b"a/b"), Err(Refusal::Nested));
    assert_eq!(entry_name(b"\xff"), Err(Refusal::NotUtf8));
}
