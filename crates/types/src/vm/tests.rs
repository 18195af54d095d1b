use super::*;

fn spec() -> VmSpec {
    crate::fixtures::vm_spec("web", 256)
}

fn image_disk() -> DiskSpec {
    DiskSpec {
        image: Some(format!("sha256:{}", "b".repeat(64))),
        size_mib: None,
        read_only: false,
        root: false,
    }
}

#[test]
fn disk_validation_names_the_disk_and_field() {
    let field = |disks: Vec<DiskSpec>| VmSpec { disks, ..spec() }.validate().err().map(|e| e.field);
    let blank = DiskSpec {
        image: None,
        size_mib: Some(64),
        ..image_disk()
    };
    let root = DiskSpec {
        root: true,
        read_only: true,
        ..image_disk()
    };
    assert_eq!(field(vec![root.clone(), blank.clone()]), None);
    assert_eq!(
        field(vec![root.clone(), root.clone()]).as_deref(),
        Some("disks")
    );
    assert_eq!(
        field(vec![
            blank.clone(),
            DiskSpec {
                root: true,
                ..blank.clone()
            }
        ])
        .as_deref(),
        Some("disks[1].root")
    );
    assert_eq!(
        field(vec![DiskSpec {
            size_mib: Some(0),
            ..blank.clone()
        }])
        .as_deref(),
        Some("disks[0].size_mib")
    );
    assert_eq!(
        field(vec![DiskSpec {
            size_mib: None,
            ..blank.clone()
        }])
        .as_deref(),
        Some("disks[0]")
    );
    assert_eq!(
        field(vec![DiskSpec {
            size_mib: Some(1),
            ..image_disk()
        }])
        .as_deref(),
        Some("disks[0].size_mib")
    );
    assert_eq!(
        field(vec![DiskSpec {
            image: Some("x".into()),
            ..image_disk()
        }])
        .as_deref(),
        Some("disks[0].image")
    );
    assert_eq!(
        field(vec![DiskSpec {
            read_only: true,
            ..blank.clone()
        }])
        .as_deref(),
        Some("disks[0].read_only")
    );
    assert_eq!(field(vec![blank; MAX_DISKS + 1]).as_deref(), Some("disks"));
    assert_eq!(
        "firecracker".parse::<VmRuntime>().ok(),
        Some(VmRuntime::Firecracker)
    );
    assert_eq!("kvm".parse::<VmRuntime>().unwrap_err().field, "runtime");
}

#[test]
fn spec_validation_names_fields() {
    assert!(spec().validate().is_ok());
    assert_eq!(
        VmSpec {
            name: "Web!".into(),
            ..spec()
        }
        .validate()
        .unwrap_err()
        .field,
        "name"
    );
    assert_eq!(
        VmSpec {
            image: "latest".into(),
            ..spec()
        }
        .validate()
        .unwrap_err()
        .field,
        "image"
    );
    assert_eq!(
        VmSpec {
            cmd: Some(vec![]),
            ..spec()
        }
        .validate()
        .unwrap_err()
        .field,
        "cmd"
    );
    let huge = VmSpec {
        cmd: Some(vec!["x".repeat(MAX_CMD_BYTES + 1)]),
        ..spec()
    };
    assert_eq!(huge.validate().unwrap_err().field, "cmd");
    for (egress, ingress, field) in [
        (Some(0), None, "network.egress_mbit"),
        (Some(100_001), None, "network.egress_mbit"),
        (None, Some(0), "network.ingress_mbit"),
    ] {
        let bad = VmSpec {
            network: NetworkSpec {
                enabled: true,
                egress_mbit: egress,
                ingress_mbit: ingress,
                isolated: false,
            },
            ..spec()
        };
        assert_eq!(bad.validate().unwrap_err().field, field);
    }
    let ok = VmSpec {
        network: NetworkSpec {
            enabled: true,
            egress_mbit: Some(1),
            ingress_mbit: Some(MAX_NET_MBIT),
            isolated: false,
        },
        ..spec()
    };
    assert!(ok.validate().is_ok());
}

#[test]
fn network_defaults_on_and_refuses_unknown_fields() {
    let n: NetworkSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(n, NetworkSpec::default());
    assert!(n.enabled);
    let n: NetworkSpec = serde_json::from_str(r#"{"enabled":false}"#).unwrap();
    assert!(!n.enabled);
    assert!(serde_json::from_str::<NetworkSpec>(r#"{"egres_mbit":1}"#).is_err());
    // A spec stored before networking existed reads with networking on.
    let mut v = serde_json::to_value(spec()).unwrap();
    v.as_object_mut().unwrap().remove("network");
    let old: VmSpec = serde_json::from_value(v).unwrap();
    assert_eq!(old.network, NetworkSpec::default());
}

#[test]
fn phase_machine() {
    use VmPhase::*;
    assert!(Pending.can_move_to(Scheduled));
    assert!(Running.can_move_to(Stopped));
    assert!(Running.can_move_to(Paused) && Paused.can_move_to(Running));
    assert!(!Pending.can_move_to(Paused));
    assert!(!Stopped.can_move_to(Running));
    assert!(!Failed.can_move_to(Running));
    assert!(!Pending.can_move_to(Running));
    // A lost node's VMs are placed again; at rest they stay.
    assert!(Running.can_move_to(Pending) && Paused.can_move_to(Pending));
    assert!(!Stopping.can_move_to(Running));
    for p in [
        Pending, Scheduled, Starting, Running, Paused, Stopping, Stopped, Failed,
    ] {
        assert!(p.can_move_to(p));
    }
}
