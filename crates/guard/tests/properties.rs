//! Property tests: the detector never panics, stays within its bounds and is deterministic;
//! the rule parser never panics and its positions are inside the text.

use firefleet_guard::{
    replay, Connection, Detector, DetectorConfig, DetectorKind, GuestSample, HostSample, Listener,
    Process, Rules, Sample, Severity,
};
use proptest::prelude::*;

fn arb_process() -> impl Strategy<Value = Process> {
    (
        1u32..50,
        prop::sample::select(vec!["sh", "bash", "xmrig", "httpd", "busybox", "python3"]),
        0u64..100_000,
        prop::option::of(prop::sample::select(vec![
            "socket:[5]",
            "/dev/null",
            "pipe:[1]",
            "socket:[x",
        ])),
    )
        .prop_map(|(pid, comm, cpu_ticks, stdio)| Process {
            pid,
            comm: comm.into(),
            cmdline: vec![comm.into()],
            cpu_ticks,
            stdin: stdio.map(str::to_string),
            stdout: stdio.map(str::to_string),
            ..Process::default()
        })
}

fn arb_conn() -> impl Strategy<Value = Connection> {
    (
        prop::sample::select(vec![
            "169.254.169.254",
            "10.0.0.1",
            "::ffff:1.2.3.4",
            "bogus",
            "",
        ]),
        any::<u16>(),
        any::<u16>(),
        prop::sample::select(vec!["ESTABLISHED", "SYN_SENT", "LISTEN", ""]),
        0u64..10,
    )
        .prop_map(
            |(remote, remote_port, local_port, state, inode)| Connection {
                proto: "tcp".into(),
                local_addr: "10.0.0.2".into(),
                local_port,
                remote_addr: remote.into(),
                remote_port,
                state: state.into(),
                inode,
            },
        )
}

fn arb_sample() -> impl Strategy<Value = Sample> {
    (
        0u8..6,
        0u64..1_000_000,
        prop::option::of(prop::sample::select(vec!["g1", "g2"])),
        (any::<u32>(), any::<u32>()),
        prop::option::of((
            prop::collection::vec(arb_process(), 0..20),
            prop::collection::vec(arb_conn(), 0..20),
            prop::collection::vec(any::<u16>(), 0..3),
        )),
    )
        .prop_map(|(vm, at_ms, group, (cpu, tx), guest)| Sample {
            vm: format!("vm-{vm}"),
            at_ms,
            group: group.map(str::to_string),
            host: HostSample {
                cpu_time_ms: u64::from(cpu),
                tx_bytes: u64::from(tx),
                ..HostSample::default()
            },
            guest: guest.map(|(processes, connections, ports)| GuestSample {
                processes,
                connections,
                listeners: ports
                    .into_iter()
                    .map(|port| Listener {
                        proto: "tcp".into(),
                        addr: "0.0.0.0".into(),
                        port,
                        inode: 1,
                    })
                    .collect(),
                ..GuestSample::default()
            }),
        })
}

proptest! {
    #[test]
    fn detector_is_bounded_sane_and_deterministic(samples in prop::collection::vec(arb_sample(), 0..80)) {
        let config = DetectorConfig { max_vms: 4, ..DetectorConfig::default() };
        let mut det = Detector::new(&Rules::builtin(), config);
        for s in &samples {
            for f in det.observe(s) {
                prop_assert!(f.count >= 1);
                prop_assert!(f.first_ms <= f.last_ms);
                prop_assert_eq!(&f.vm, &s.vm);
                if f.detector != DetectorKind::Rule {
                    prop_assert_eq!(f.severity, Severity::Low);
                }
            }
            prop_assert!(det.vm_count() <= 4);
        }
        prop_assert_eq!(replay(&Rules::builtin(), &samples), replay(&Rules::builtin(), &samples));
    }

    #[test]
    fn parse_never_panics_and_positions_are_in_the_text(text in "(\\[\\[rule\\]\\]\n|id = \"a\"\n|severity = \"(low|bad)\"\n|when = \\{ [a-z_]{1,20} = [0-9\"]{1,3} \\}\n|[ -~]{0,10}\n){0,8}") {
        if let Err(e) = Rules::parse(&text) {
            let lines = text.lines().count().max(1);
            prop_assert!(e.line >= 1 && e.line <= lines + 1, "{} in {:?}", e, text);
            prop_assert!(e.column >= 1);
            prop_assert!(!e.message.is_empty());
        }
    }
}
