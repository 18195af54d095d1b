//! Moving a running VM to another node: snapshot on the source, transfer, restore on the
//! destination, switch. Each step is recorded in the migration record, so that a crash of the
//! server or of either agent resumes the step it was in (every step is idempotent) or fails the
//! migration with the VM still on its source.

use crate::{
    ids::{NodeId, VmId},
    Generation, UnixMillis,
};

/// Where a migration is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// The source agent pauses the VM, snapshots it and uploads the snapshot.
    Transferring,
    /// The destination agent downloads the snapshot and restores the VM from it.
    Restoring,
    /// The VM runs on the destination; the source removed its copy.
    Done,
    /// Given up; the VM stays on (and runs again on) its source.
    Failed,
}

impl MigrationPhase {
    /// Done or failed.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, MigrationPhase::Done | MigrationPhase::Failed)
    }

    /// Whether `self -> next` is a legal step.
    #[must_use]
    pub fn can_move_to(self, next: MigrationPhase) -> bool {
        use MigrationPhase::*;
        self == next
            || matches!(
                (self, next),
                (Transferring, Restoring | Failed) | (Restoring, Done | Failed)
            )
    }
}

/// How the VM's state moves.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// Paused, snapshotted, transferred, restored: downtime is the whole transfer.
    #[default]
    Snapshot,
    /// Pre-copy: memory is copied while the guest runs; it stops only for the last round.
    Live,
}

/// A migration of one VM (at most one at a time per VM).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Migration {
    /// The VM.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// Its node when the migration was asked for.
    #[schema(value_type = String)]
    pub from: NodeId,
    /// Where it goes.
    #[schema(value_type = String)]
    pub to: NodeId,
    /// The VM's generation when asked; the switch bumps it.
    #[schema(value_type = u64)]
    pub generation: Generation,
    /// The name of the snapshot that carries it.
    pub snapshot: String,
    /// Step.
    pub phase: MigrationPhase,
    /// When it was asked for.
    pub requested_ms: UnixMillis,
    /// When the source paused the VM (downtime starts).
    #[serde(default)]
    pub paused_ms: Option<UnixMillis>,
    /// When the snapshot was on the server.
    #[serde(default)]
    pub transferred_ms: Option<UnixMillis>,
    /// When the VM ran on the destination (downtime ends).
    #[serde(default)]
    pub resumed_ms: Option<UnixMillis>,
    /// Snapshot bytes moved.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Why it failed, or what it is doing.
    #[serde(default)]
    pub message: Option<String>,
    /// Snapshot or live.
    #[serde(default)]
    pub mode: MigrationMode,
    /// The kernel command line the VM was booted with (live: the destination passes the same).
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// The guest's stop time as the VMM measured it (live), ms.
    #[serde(default)]
    pub vmm_downtime_ms: Option<u64>,
}

impl Migration {
    /// Milliseconds the guest did not run (pause on the source to run on the destination).
    #[must_use]
    pub fn downtime_ms(&self) -> Option<u64> {
        Some(self.resumed_ms?.saturating_sub(self.paused_ms?))
    }

    /// Milliseconds from the request to the VM running on the destination.
    #[must_use]
    pub fn total_ms(&self) -> Option<u64> {
        Some(self.resumed_ms?.saturating_sub(self.requested_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_only_go_forward() {
        use MigrationPhase::*;
        assert!(Transferring.can_move_to(Restoring) && Restoring.can_move_to(Done));
        assert!(Transferring.can_move_to(Failed) && Restoring.can_move_to(Failed));
        assert!(!Restoring.can_move_to(Transferring));
        assert!(!Done.can_move_to(Failed) && !Failed.can_move_to(Restoring));
        assert!(Done.is_terminal() && !Restoring.is_terminal());
    }
}
