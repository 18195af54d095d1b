//! Snapshots (`/v1/vms/{vm}/snapshots`, `POST /v1/vms/{vm}/restore`) and how large an
//! archive the server accepts.

use firefleet_types::{DiskSpec, Snapshot};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a snapshot archive may hold besides guest memory and disk copies: device state,
/// manifest, tar headers (QEMU's state stream carries memory with a few MiB of framing).
pub const SNAPSHOT_OVERHEAD_BYTES: u64 = 256 << 20;
/// The allowance for a writable disk made from an image in a snapshot archive. The control
/// plane does not know image sizes (they live in each node's store); 64 GiB is far above the
/// images `image build-disk` makes (a directory's contents plus slack) and still bounds what a
/// node can make the server store.
pub const IMAGE_DISK_SNAPSHOT_BYTES: u64 = 64 << 30;

/// The largest snapshot archive (a migration's, or a snapshot's copy) the server accepts for a
/// VM of `memory_mib` with `disks` (its spec's): its memory, each writable disk (a blank disk's size, an image disk's
/// [`IMAGE_DISK_SNAPSHOT_BYTES`]) plus 1/256 of it for qcow2 metadata, and
/// [`SNAPSHOT_OVERHEAD_BYTES`]. Sized per VM rather than fixed: a fixed cap small enough to
/// matter would refuse large VMs (memory goes up to 1 TiB). Read-only disks are referenced, not
/// copied. Pure.
pub fn max_snapshot_bytes(memory_mib: u64, disks: &[DiskSpec]) -> u64 {
    const MIB: u64 = 1 << 20;
    let disks = disks
        .iter()
        .filter(|d| !d.read_only)
        .map(|d| match (&d.image, d.size_mib) {
            (None, Some(mib)) => mib.saturating_mul(MIB),
            _ => IMAGE_DISK_SNAPSHOT_BYTES,
        })
        .fold(0u64, |sum, bytes| {
            sum.saturating_add(bytes).saturating_add(bytes / 256)
        });
    memory_mib
        .saturating_mul(MIB)
        .saturating_add(disks)
        .saturating_add(SNAPSHOT_OVERHEAD_BYTES)
}

/// `POST /v1/vms/{vm}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Name, unique per VM.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

/// A list of snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// The snapshots, by name.
    pub items: Vec<Snapshot>,
}

/// `POST /v1/vms/{vm}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVmRequest {
    /// The snapshot to restore from (it must be ready).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub snapshot: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_may_hold_memory_writable_disks_and_overhead() {
        let disk = |image: Option<&str>, size_mib, read_only| DiskSpec {
            image: image.map(str::to_owned),
            size_mib,
            read_only,
            root: false,
        };
        let gib = 1u64 << 30;
        assert_eq!(max_snapshot_bytes(1024, &[]), gib + SNAPSHOT_OVERHEAD_BYTES);
        let disks = [
            disk(None, Some(2048), false),
            disk(Some("sha256:x"), None, false),
            disk(Some("sha256:y"), None, true),
        ];
        assert_eq!(
            max_snapshot_bytes(1024, &disks),
            gib + 2 * gib
                + 2 * gib / 256
                + IMAGE_DISK_SNAPSHOT_BYTES * 257 / 256
                + SNAPSHOT_OVERHEAD_BYTES
        );
        assert_eq!(max_snapshot_bytes(u64::MAX, &disks), u64::MAX);
    }
}
