//! The executor: carries out one operation on one VM ([`Op`]), at most one per key at a time,
//! and queues what the server must hear of it ([`Outcome`]) for the reconciler to report.
//!
//! [`Ops::run`] is a dispatch: one function per operation, each doing its own steps, in
//! `launch` (launch, restore, a function's clone), `lifecycle` (stop, kill, remove, pause,
//! resume, network settings, exec, statistics), `snapshot` and `migration`. Operations are
//! async: VMM, disk and host-network work runs on tokio's blocking pool
//! ([`crate::control::blocking`]), the server is talked to through [`ControlPlane`]. A launch
//! that fails leaves its message in [`Ops::failed`], which the next decision reports.
//!
//! Imports: `control`, `decide` (its [`Action`]), `disks`, `guest`, `migrate`, `network`,
//! `runtimes`; none of them imports `ops`.

mod launch;
mod lifecycle;
mod migration;
mod snapshot;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use firefleet_api::{
    ExecRequestRecord, ExecResult, MigrationIntent, SnapshotReport, VmIntent, VmStats,
};
use firefleet_types::{Generation, VmRuntime};
use firefleet_vmm::Runtime;

use crate::control::{blocking, ControlPlane};
use crate::decide::Action;
use crate::network::Network;
use crate::runtimes::Runtimes;

/// How long a graceful stop may take before the VMM is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One thing to do.
pub enum Op {
    /// What the decision for the VM of the intent asked for (a launch or restore makes the
    /// config, disks and network from the intent).
    Decided(Action, Box<VmIntent>),
    /// Remove a local VM that the intents no longer list (deleted, or moved away).
    Remove,
    /// Take snapshot `name` and copy it to the control plane.
    Snapshot { name: String },
    /// Run a command in the guest.
    Exec(Box<ExecRequestRecord>),
    /// Collect the VM's statistics.
    Stats,
    /// Apply a running VM's network settings (limits, isolation) as its spec now says.
    Network(firefleet_types::NetworkSpec),
    /// Source side of a migration: snapshot (paused), upload.
    MigrateOut(Box<MigrationIntent>),
    /// Destination side: receive, make disks and network, restore, report.
    MigrateIn(Box<MigrationIntent>),
}

/// What an operation that the server must hear about produced.
pub enum Outcome {
    Snapshot {
        vm: String,
        name: String,
        report: SnapshotReport,
    },
    Exec {
        vm: String,
        id: String,
        result: ExecResult,
    },
    Stats {
        vm: String,
        stats: VmStats,
        /// What the guard looks at in the guest, when it answered.
        guest: Option<firefleet_guard::GuestSample>,
    },
    Restored {
        vm: String,
        generation: Generation,
    },
    /// A restore request that cannot be carried out here (this node lacks the VM's backend or
    /// image): nothing was tried.
    Refused {
        vm: String,
        generation: Generation,
        message: String,
    },
    /// The network settings now in force for a VM (or why they could not be applied).
    Network {
        vm: String,
        spec: firefleet_types::NetworkSpec,
        result: Result<(), String>,
    },
}

/// The executor (see the module doc). Cheap to clone: every clone shares the same state.
#[derive(Clone)]
pub struct Ops {
    runtimes: Arc<Runtimes>,
    network: Arc<Network>,
    data_dir: PathBuf,
    image_dir: PathBuf,
    control: Arc<dyn ControlPlane>,
    busy: Arc<Mutex<HashSet<String>>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// Launches that failed, with the message to report, until the VM leaves the intents.
    pub failed: Arc<Mutex<HashMap<String, String>>>,
    /// Held while a function's template is fetched and unpacked (once per node).
    templates: Arc<tokio::sync::Mutex<()>>,
}

/// Milliseconds since the Unix epoch (the clock the agent reports with).
pub(crate) use firefleet_vmm::unix_ms as now_ms;

impl Ops {
    pub fn new(
        runtimes: Arc<Runtimes>,
        network: Arc<Network>,
        data_dir: PathBuf,
        image_dir: PathBuf,
        control: Arc<dyn ControlPlane>,
    ) -> Self {
        Self {
            runtimes,
            network,
            data_dir,
            image_dir,
            control,
            busy: Default::default(),
            outcomes: Default::default(),
            failed: Default::default(),
            templates: Default::default(),
        }
    }

    /// Whether an operation holds `key` (a VM id for life-cycle operations).
    pub fn is_busy(&self, key: &str) -> bool {
        self.busy.lock().map(|b| b.contains(key)).unwrap_or(true)
    }

    /// Takes the queued outcomes.
    pub fn drain(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    /// The message a failed launch of `vm` left, if any.
    pub fn launch_error(&self, vm: &str) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.get(vm).cloned())
    }

    /// Starts `op` for VM `vm` under `key` unless an operation already holds the key; the
    /// task carrying it out.
    pub fn spawn(&self, key: String, vm: String, op: Op) -> Option<tokio::task::JoinHandle<()>> {
        if let Ok(mut b) = self.busy.lock() {
            if !b.insert(key.clone()) {
                return None;
            }
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let outcome = this.run(&vm, op).await;
            if let Some(o) = outcome {
                if let Ok(mut q) = this.outcomes.lock() {
                    q.push(o);
                }
            }
            if let Ok(mut b) = this.busy.lock() {
                b.remove(&key);
            }
        }))
    }

    /// Carries out `op` on `vm`: one function per operation.
    async fn run(&self, vm: &str, op: Op) -> Option<Outcome> {
        match op {
            Op::Decided(action, intent) => match action {
                Action::Launch => launch::launch(self, *intent).await,
                Action::Restore {
                    snapshot,
                    generation,
                } => launch::restore(self, *intent, snapshot, generation).await,
                Action::Stop => lifecycle::stop(self, vm).await,
                Action::Kill => lifecycle::kill(self, vm).await,
                Action::Remove => lifecycle::remove(self, vm).await,
                Action::Pause => lifecycle::pause(self, vm).await,
                Action::Resume => lifecycle::resume(self, vm).await,
            },
            Op::Remove => lifecycle::remove(self, vm).await,
            Op::Network(spec) => lifecycle::network(self, vm, spec).await,
            Op::Exec(rec) => lifecycle::exec(self, vm, *rec).await,
            Op::Stats => lifecycle::stats(self, vm).await,
            Op::Snapshot { name } => snapshot::snapshot(self, vm, name).await,
            Op::MigrateOut(m) => migration::migrate_out(self, vm, *m).await,
            Op::MigrateIn(m) => migration::migrate_in(self, vm, *m).await,
        }
    }

    /// Runs `f` on the blocking pool with the backend holding `vm` (else the one `wanted`);
    /// `None` if it panicked (the operation then ends there).
    async fn with_runtime<T: Send + 'static>(
        &self,
        vm: &str,
        wanted: Option<VmRuntime>,
        f: impl FnOnce(&Self, &dyn Runtime, &str) -> T + Send + 'static,
    ) -> Option<T> {
        let this = self.clone();
        let id = vm.to_owned();
        blocking(move || {
            let rt = this.runtimes.for_vm(&id, wanted);
            f(&this, &*rt, &id)
        })
        .await
        .map_err(|e| tracing::warn!(vm, error = %e, "an operation's step failed"))
        .ok()
    }

    /// Records why `vm` could not be launched (reported as `launch failed: …`).
    fn fail(&self, vm: &str, why: String) {
        self.refuse(vm, format!("launch failed: {why}"));
    }

    /// Records why `vm` cannot be launched here at all (its backend or image): reported as is.
    fn refuse(&self, vm: &str, message: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert(vm.to_owned(), message);
        }
    }

    fn detach(&self, vm: &str) {
        if let Err(e) = self.network.detach(vm) {
            tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "network detach failed");
        }
    }
}

/// Logs a failed VMM step.
fn warn(vm: &str, what: &str, e: &firefleet_vmm::VmmError) {
    tracing::warn!(vm, error = %firefleet_types::error_chain(e), "{what} failed");
}
