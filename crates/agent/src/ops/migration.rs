//! This node's side of a migration: the source sends (snapshot and upload, or QEMU's live
//! stream), the destination makes the VM's config, disks and network here and receives; a
//! destination that fails undoes what it made (the VM stays on its source). The steps
//! themselves are in [`crate::migrate`].

use firefleet_api::{MigrationIntent, VmIntent};
use firefleet_types::{MigrationMode, VmPhase};

use super::launch::Unprepared;
use super::{Ops, Outcome};

/// The source's part.
pub(super) async fn migrate_out(ops: &Ops, vm: &str, m: MigrationIntent) -> Option<Outcome> {
    if m.migration.mode == MigrationMode::Live {
        match ops.runtimes.qemu() {
            Some(qemu) => crate::migrate::send_live(ops.control.clone(), qemu, &m).await,
            None => {
                let r = crate::migrate::failed("source: live migration needs QEMU".to_owned());
                let _ = ops.control.report_migration(vm, &r).await;
            }
        }
        return None;
    }
    let (rt, dir) = ops
        .with_runtime(vm, None, |ops, _, vm| {
            (ops.runtimes.for_vm(vm, None), ops.runtimes.vm_dir(vm))
        })
        .await?;
    crate::migrate::send(&*ops.control, rt, dir, &m).await;
    None
}

/// The intent of a VM migrating here, as the destination launches it.
fn incoming(m: &MigrationIntent) -> VmIntent {
    VmIntent {
        id: m.migration.vm.clone(),
        generation: m.migration.generation,
        spec: m.spec.clone(),
        deleting: false,
        phase: VmPhase::Running,
        restored_generation: None,
        restarts: 0,
    }
}

/// The destination's part.
pub(super) async fn migrate_in(ops: &Ops, vm: &str, m: MigrationIntent) -> Option<Outcome> {
    let kind = m.spec.runtime;
    let intent = incoming(&m);
    let (prepared, rt, dir) = ops
        .with_runtime(vm, Some(kind), move |ops, _, vm| {
            let prepared = ops
                .config_with_disks(&intent)
                .map_err(|(Unprepared::Config(e) | Unprepared::Host(e))| e)
                .and_then(|mut cfg| ops.attach(&intent, &mut cfg).map(|()| cfg));
            let rt = ops.runtimes.for_vm(vm, Some(kind));
            (prepared, rt, ops.runtimes.dir_for(kind, vm))
        })
        .await?;
    let done = match prepared {
        Ok(cfg) if m.migration.mode == MigrationMode::Live => match ops.runtimes.qemu() {
            Some(qemu) => crate::migrate::receive_live(&*ops.control, qemu, &m, cfg).await,
            None => Err("live migration needs QEMU".to_owned()),
        },
        Ok(cfg) => crate::migrate::restore(&*ops.control, rt, dir, &m, cfg).await,
        Err(e) => {
            let msg = format!("destination: {e}");
            let _ = ops
                .control
                .report_migration(vm, &crate::migrate::failed(msg.clone()))
                .await;
            Err(msg)
        }
    };
    if done.is_err() {
        // Undo what this node made; the VM stays on its source.
        ops.with_runtime(vm, Some(kind), |ops, rt, vm| {
            if rt.remove(vm).is_ok() {
                let _ = crate::disks::remove(&ops.data_dir, vm);
                ops.detach(vm);
            }
        })
        .await;
    }
    None
}
