//! The QEMU command line for a microvm (see ../shared/RUNTIME-NOTES.md for why each part).

use firefleet_guest::AGENT_PORT_NAME;
use firefleet_types::Accel;

use crate::boot;
use crate::disk::{detect_format, DiskFormat};
use crate::vm::LaunchConfig;

/// File names inside a VM's state directory. QEMU runs with the state directory as its working
/// directory and gets these relative names, so long state roots do not hit the 108-byte limit
/// of Unix socket paths on the QEMU side. The names every backend shares are in
/// [`crate::statedir`].
pub use crate::statedir::{CONFIG_FILE, CONSOLE_LOG, EXIT_FILE, PID_FILE, SNAPSHOTS_DIR};
/// QMP socket.
pub const QMP_SOCK: &str = "qmp.sock";
/// The guest channel (virtio-serial port `org.firefleet.agent`).
pub const GUEST_SOCK: &str = "guest.sock";
/// QEMU's own stdout/stderr.
pub const QEMU_LOG: &str = "qemu.log";

/// How a process is started: a fresh boot, or from a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgOptions {
    /// The kernel command line to pass instead of the one built from the config (a restore
    /// passes the snapshot's, byte for byte).
    pub kernel_cmdline: Option<String>,
    /// Wait for `migrate-incoming` (`-incoming defer`).
    pub incoming: bool,
    /// Append to `console.log` instead of truncating it.
    pub append_console: bool,
    /// Keep the vCPUs stopped once incoming state is loaded (`-S`), until `cont`.
    pub start_paused: bool,
}

/// The host's TSC frequency in kHz: `$FIREFLEET_TSC_KHZ`, else `cpu MHz` of /proc/cpuinfo x 1000.
pub fn host_tsc_khz() -> Option<u64> {
    if let Some(v) = std::env::var("FIREFLEET_TSC_KHZ")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(v);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    tsc_khz_from_cpuinfo(&cpuinfo)
}

/// Parses the first `cpu MHz` line.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// The kernel command line.
pub fn kernel_cmdline(cfg: &LaunchConfig, tsc_khz: Option<u64>) -> String {
    // init_on_free=1: freed guest pages are zeroed, so snapshots compress to what is in use
    // (~57 MB instead of ~96 MB for an idle 256 MiB guest) and freed data does not linger.
    let mut s = String::from("console=ttyS0 reboot=t panic=-1 quiet init_on_free=1");
    if let Some(khz) = tsc_khz {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    boot::kernel_cmdline(&s, &boot::guest_config(cfg))
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled).
fn opt_value(v: &str) -> String {
    v.replace(',', ",,")
}

/// The arguments after the binary, for a fresh boot.
pub fn qemu_args(cfg: &LaunchConfig, tsc_khz: Option<u64>) -> Vec<String> {
    qemu_args_with(cfg, tsc_khz, &ArgOptions::default())
}

/// The arguments after the binary. The machine and devices depend only on `cfg`, so a restore
/// (same config, `opts.incoming`) gets the command line of the process it was snapshotted from.
pub fn qemu_args_with(cfg: &LaunchConfig, tsc_khz: Option<u64>, opts: &ArgOptions) -> Vec<String> {
    let append = opts
        .kernel_cmdline
        .clone()
        .unwrap_or_else(|| kernel_cmdline(cfg, tsc_khz));
    let (accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-M", &format!("microvm,accel={accel}"), "-cpu", cpu]);
    push(&[
        "-m",
        &cfg.memory_mib.to_string(),
        "-smp",
        &cfg.vcpus.to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-name", &format!("firefleet-{},debug-threads=on", cfg.id)]);
    push(&["-kernel", &cfg.image.kernel.to_string_lossy()]);
    push(&["-initrd", &cfg.image.initrd.to_string_lossy()]);
    push(&["-append", &append]);
    let console_append = if opts.append_console {
        ",append=on"
    } else {
        ""
    };
    push(&[
        "-chardev",
        &format!("file,id=console,path={CONSOLE_LOG}{console_append}"),
        "-serial",
        "chardev:console",
    ]);
    push(&["-qmp", &format!("unix:{QMP_SOCK},server=on,wait=off")]);
    push(&[
        "-chardev",
        &format!("socket,id=agent,path={GUEST_SOCK},server=on,wait=off"),
    ]);
    push(&["-device", "virtio-serial-device"]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
    ]);
    for (i, d) in cfg.disks.iter().enumerate() {
        // A missing file fails in QEMU with its own message; launch checks paths first.
        let format = detect_format(&d.path).unwrap_or(DiskFormat::Raw);
        let ro = if d.read_only { ",readonly=on" } else { "" };
        let file = d.vmm_path.as_ref().unwrap_or(&d.path);
        let backing = match &d.vmm_backing {
            Some(b) => {
                let real = crate::disk::backing_file(&d.path).ok().flatten();
                let bformat = real
                    .and_then(|r| detect_format(&r).ok())
                    .unwrap_or(DiskFormat::Raw);
                format!(
                    ",backing.driver={},backing.file.filename={}",
                    bformat.as_str(),
                    opt_value(&b.to_string_lossy())
                )
            }
            None => String::new(),
        };
        push(&[
            "-drive",
            &format!(
                "id=d{i},file={},format={},if=none{ro}{backing}",
                opt_value(&file.to_string_lossy()),
                format.as_str()
            ),
            "-device",
            &format!("virtio-blk-device,drive=d{i}"),
        ]);
    }
    if let Some(n) = &cfg.net {
        // The TAP exists already (`net::NodeNetwork::attach`); QEMU opens it by name.
        push(&[
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", n.tap),
            "-device",
            &format!("virtio-net-device,netdev=n0,mac={}", n.mac),
        ]);
    }
    if opts.start_paused {
        push(&["-S"]);
    }
    if opts.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::DiskRole;
    use firefleet_guest::config::{GuestConfig, GuestDisk, GuestDiskRole};

    fn cfg(accel: Accel, cmd: Option<Vec<String>>) -> LaunchConfig {
        LaunchConfig {
            cmd,
            accel,
            ..LaunchConfig::sample()
        }
    }

    #[test]
    fn builds_a_microvm_command_line() {
        let args = qemu_args(&cfg(Accel::Tcg, None), Some(2_300_000));
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-M microvm,accel=tcg -cpu max -m 256 -smp 2"),
            "{joined}"
        );
        for part in [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-name firefleet-vm1,debug-threads=on",
            "-kernel /img/vmlinuz",
            "-initrd /img/initrd.img",
            "-serial chardev:console",
            "file,id=console,path=console.log",
            "-qmp unix:qmp.sock,server=on,wait=off",
            "socket,id=agent,path=guest.sock,server=on,wait=off",
            "virtserialport,chardev=agent,name=org.firefleet.agent",
        ] {
            assert!(joined.contains(part), "missing {part}: {joined}");
        }
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.starts_with(
            "console=ttyS0 reboot=t panic=-1 quiet init_on_free=1 tsc_early_khz=2300000 firefleet.config="
        ));
        assert!(!append.contains("acpi=off"));
        let kvm = qemu_args(&cfg(Accel::Kvm, None), None).join(" ");
        assert!(kvm.contains("-M microvm,accel=kvm -cpu host"));
        assert!(!kvm.contains("tsc_early_khz"));
    }

    #[test]
    fn passes_the_command_to_the_guest() {
        let cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo hi; exit 3".to_string(),
        ];
        let line = kernel_cmdline(&cfg(Accel::Tcg, Some(cmd.clone())), None);
        let guest = GuestConfig::from_kernel_cmdline(&line).unwrap();
        assert_eq!(guest.cmd, Some(cmd));
        assert_eq!(guest.vm_id, "vm1");
    }

    #[test]
    fn attaches_disks_in_order_and_tells_the_guest() {
        use crate::runtime::DiskConfig;
        let mut c = cfg(Accel::Tcg, None);
        c.disks = vec![
            DiskConfig {
                path: "/d/root,1.ext4".into(),
                role: DiskRole::Root,
                read_only: true,
                vmm_path: None,
                vmm_backing: None,
            },
            DiskConfig {
                path: "/d/data.ext4".into(),
                role: DiskRole::Data,
                read_only: false,
                vmm_path: None,
                vmm_backing: None,
            },
        ];
        let joined = qemu_args(&c, None).join(" ");
        assert!(
            joined.contains(
                "-drive id=d0,file=/d/root,,1.ext4,format=raw,if=none,readonly=on \
                 -device virtio-blk-device,drive=d0 \
                 -drive id=d1,file=/d/data.ext4,format=raw,if=none \
                 -device virtio-blk-device,drive=d1"
            ),
            "{joined}"
        );
        assert!(!joined.contains("-incoming"));
        let guest = GuestConfig::from_kernel_cmdline(&kernel_cmdline(&c, None)).unwrap();
        assert_eq!(
            guest.disks,
            vec![
                GuestDisk {
                    role: GuestDiskRole::Root,
                    read_only: true
                },
                GuestDisk {
                    role: GuestDiskRole::Data,
                    read_only: false
                }
            ]
        );
        let restore = qemu_args_with(
            &c,
            Some(1),
            &ArgOptions {
                kernel_cmdline: Some("console=ttyS0 saved".into()),
                incoming: true,
                start_paused: false,
                append_console: true,
            },
        );
        let joined = restore.join(" ");
        assert!(joined.ends_with("-incoming defer"), "{joined}");
        assert!(joined.contains("path=console.log,append=on"), "{joined}");
        assert!(
            joined.contains("-append console=ttyS0 saved -chardev"),
            "{joined}"
        );
    }

    #[test]
    fn reads_tsc_from_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2300.000\ncpu MHz\t\t: 1.0\n";
        assert_eq!(tsc_khz_from_cpuinfo(info), Some(2_300_000));
        assert_eq!(tsc_khz_from_cpuinfo("nothing"), None);
    }
}
