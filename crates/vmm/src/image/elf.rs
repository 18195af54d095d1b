//! Small ELF and kernel-image helpers: is a binary statically linked, and the uncompressed
//! `vmlinux` inside a bzImage.

use std::io::Read;

/// What [`inspect_executable`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutableKind {
    /// An ELF without a `PT_INTERP` program header (static or static-pie).
    Static,
    /// An ELF that needs the dynamic loader named here.
    Dynamic(String),
    /// Not a 64-bit little-endian ELF.
    NotElf,
}

const PT_INTERP: u32 = 3;

/// Reads the program headers of an ELF64 LE image.
pub fn inspect_executable(bytes: &[u8]) -> ExecutableKind {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return ExecutableKind::NotElf;
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return ExecutableKind::NotElf;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return ExecutableKind::NotElf;
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        let Some(p_type) = u32_at(ph) else {
            return ExecutableKind::NotElf;
        };
        if p_type == PT_INTERP {
            let off = u64_at(ph + 8)
                .and_then(|o| usize::try_from(o).ok())
                .unwrap_or(0);
            let size = u64_at(ph + 32)
                .and_then(|s| usize::try_from(s).ok())
                .unwrap_or(0);
            let interp = bytes
                .get(off..off.saturating_add(size))
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_default();
            return ExecutableKind::Dynamic(interp);
        }
    }
    ExecutableKind::Static
}

/// Finds the uncompressed ELF kernel inside a bzImage, like the kernel's
/// `scripts/extract-vmlinux`: try each compression magic at each offset where it occurs and keep
/// the first that decompresses to an ELF. Supports gzip (in process) and LZ4 / xz / zstd (through
/// the `lz4`, `xz` and `zstd` tools when installed). Returns `None` when nothing works.
pub fn extract_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    type Decoder = fn(&[u8]) -> Option<Vec<u8>>;
    let candidates: [(&[u8], Decoder); 4] = [
        (&[0x02, 0x21, 0x4c, 0x18], |b| run_tool("lz4", &["-dc"], b)),
        (&[0x1f, 0x8b, 0x08], gunzip),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], |b| {
            run_tool("xz", &["-dc"], b)
        }),
        (&[0x28, 0xb5, 0x2f, 0xfd], |b| run_tool("zstd", &["-dc"], b)),
    ];
    for (magic, decode) in candidates {
        let mut start = 0;
        while let Some(pos) = find(&bzimage[start..], magic) {
            let at = start + pos;
            if let Some(out) = decode(&bzimage[at..]) {
                if matches!(
                    inspect_executable(&out),
                    ExecutableKind::Static | ExecutableKind::Dynamic(_)
                ) {
                    return Some(out);
                }
            }
            start = at + 1;
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut d = flate2::read::GzDecoder::new(b);
    // Trailing garbage after the stream is expected; keep what decompressed.
    let _ = d.read_to_end(&mut out);
    (!out.is_empty()).then_some(out)
}

/// Pipes `input` through a decompressor; partial output (trailing garbage) is accepted.
fn run_tool(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    (!out.stdout.is_empty()).then_some(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_and_dynamic_binaries() {
        // The test binary itself is dynamically linked on a gnu host.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(
            inspect_executable(&me),
            ExecutableKind::Dynamic(_)
        ));
        assert_eq!(inspect_executable(b"#!/bin/sh\n"), ExecutableKind::NotElf);
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            // busybox-static on Debian.
            assert_eq!(inspect_executable(&bb), ExecutableKind::Static);
        }
    }

    #[test]
    fn truncated_elf_is_not_elf() {
        let mut b = b"\x7fELF\x02\x01".to_vec();
        b.resize(64, 0);
        b[0x20] = 0xff; // phoff far beyond the end
        b[0x38] = 1;
        assert_eq!(inspect_executable(&b), ExecutableKind::NotElf);
    }
}
