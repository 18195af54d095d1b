//! The runtime abstraction every VMM backend implements. The values it takes and returns are in
//! [`crate::vm`], its error in [`crate::error`] (re-exported here).

use std::path::Path;
use std::time::Duration;

use crate::channel::{ExecOutput, GuestTelemetry, InvokeHandler, InvokeOutput};
pub use crate::error::VmmError;
use crate::guestlink::GuestLink;
pub use crate::vm::{
    ConsoleChunk, DiskConfig, DiskCounters, DiskRole, LaunchConfig, NetAttachment, Observation,
    SnapshotInfo, VmProcessInfo, VmmIoStats, GUEST_READY_MARKER,
};
use crate::{console, fsutil, statedir};

/// How long `remove` lets a running guest shut down before it is killed.
pub const REMOVE_GRACE: Duration = Duration::from_secs(5);

/// A VMM backend. All methods are blocking and idempotent where stated.
pub trait Runtime: Send + Sync {
    /// The backend's name (`qemu`).
    fn name(&self) -> &'static str;
    /// Starts the VMM and returns once its process is up (not waiting for the guest). If the
    /// VM's state directory shows a live process, returns that one instead.
    fn launch(&self, cfg: &LaunchConfig) -> Result<VmProcessInfo, VmmError>;
    /// Ids of the VMs that have a state directory (to re-adopt after an agent restart).
    fn list(&self) -> Result<Vec<String>, VmmError> {
        statedir::list_vms(self.state_root())
    }
    /// What is known about a VM now.
    fn observe(&self, id: &str) -> Result<Observation, VmmError>;
    /// Graceful stop (guest channel, else ACPI), then forced after `grace`. Idempotent.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError>;
    /// Captured console bytes from `offset`, at most `max` (from `<state dir>/console.log`,
    /// which every backend has its VMM write).
    fn console(&self, id: &str, offset: u64, max: usize) -> Result<ConsoleChunk, VmmError> {
        let dir = statedir::existing_vm_dir(self.state_root(), id)?;
        console::read_chunk(&dir.join(statedir::CONSOLE_LOG), offset, max)
    }
    /// Stops the VM if running and deletes its state directory. Idempotent.
    fn remove(&self, id: &str) -> Result<(), VmmError> {
        statedir::validate_id(id)?;
        let dir = statedir::vm_dir(self.state_root(), id);
        if !dir.exists() {
            self.release(id);
            return Ok(());
        }
        self.stop(id, REMOVE_GRACE)?;
        self.release(id);
        // A reaper thread may still be writing the exit record: the removal is retried briefly.
        fsutil::remove_dir_retrying(&dir)
    }
    /// The directory holding one state directory per VM (`<state root>/<id>/`).
    fn state_root(&self) -> &Path;
    /// Frees what the backend holds for a stopped VM outside its state directory (guest channel,
    /// cgroups, jail, counters); [`Runtime::remove`] calls it once the VM is stopped, and also
    /// when the VM has no state directory. Best effort; the default holds nothing.
    fn release(&self, id: &str) {
        let _ = id;
    }
    /// Pauses the guest's vCPUs (guest time stops). Idempotent.
    fn pause(&self, id: &str) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "pause",
            id: id.to_owned(),
        })
    }
    /// Resumes a paused guest. Idempotent.
    fn resume(&self, id: &str) -> Result<(), VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "resume",
            id: id.to_owned(),
        })
    }
    /// Writes a snapshot (memory, device state, disks) of a running or paused VM to
    /// `<state dir>/snapshots/<name>/`, atomically: a crash never leaves a directory that looks
    /// complete but is not. The VM is left paused if `leave_paused`, else it runs on.
    fn snapshot(&self, id: &str, name: &str, leave_paused: bool) -> Result<SnapshotInfo, VmmError> {
        let _ = (name, leave_paused);
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "snapshot",
            id: id.to_owned(),
        })
    }
    /// VM `id`'s guest channel (set up if needed), through which the default `exec`, `invoke`
    /// and `telemetry` go; `op` names the operation for [`VmmError::Unsupported`], which is the
    /// default answer (a backend without a guest channel).
    fn guest_link(&self, id: &str, op: &'static str) -> Result<GuestLink<'_>, VmmError> {
        Err(VmmError::Unsupported {
            backend: self.name(),
            op,
            id: id.to_owned(),
        })
    }
    /// Runs `argv` in the guest through the guest channel (killed after `timeout`), with `stdin`
    /// as its input if given.
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, VmmError> {
        self.guest_link(id, "exec")?.exec(argv, stdin, timeout)
    }
    /// Runs one invocation of a serverless function in the guest through the guest channel:
    /// `handler` (a command run per invocation, or the workload's HTTP port) gets `body` and is
    /// stopped after `timeout`. Invocations on one VM run concurrently. A `body` over
    /// [`crate::channel::MAX_BODY`] bytes is refused before anything is sent.
    fn invoke(
        &self,
        id: &str,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, VmmError> {
        self.guest_link(id, "invoke")?
            .invoke(handler, body, timeout)
    }
    /// The guest's telemetry (processes, sockets, load, memory) through the guest channel.
    fn telemetry(&self, id: &str) -> Result<GuestTelemetry, VmmError> {
        self.guest_link(id, "telemetry")?.telemetry()
    }
    /// The I/O counters the VMM keeps for a running VM: per disk, and the backend's own metrics
    /// where it has them. Empty where the backend keeps none.
    fn io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        let _ = id;
        Ok(VmmIoStats::default())
    }
    /// Starts a fresh VMM process for `cfg.id` from a complete snapshot directory (possibly
    /// copied from another node) and lets it run: the guest continues where it was snapshotted.
    /// The VM must not be running on this host.
    fn restore(&self, cfg: &LaunchConfig, snapshot: &Path) -> Result<VmProcessInfo, VmmError> {
        let _ = snapshot;
        Err(VmmError::Unsupported {
            backend: self.name(),
            op: "restore",
            id: cfg.id.clone(),
        })
    }
}
