//! Blocking VMM operations, run on tokio's blocking pool at most one per key at a time, with
//! their outcomes queued for the reconciler to report.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use firefleet_api::{ExecRequestRecord, ExecResult, SnapshotReport, VmStats};
use firefleet_types::{Generation, SnapshotPhase};
use firefleet_vmm::{LaunchConfig, QemuRuntime, Runtime};

use crate::network::{NetRequest, Network};

/// How long a graceful stop may take before the VMM is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One thing to do.
pub enum Op {
    /// Attach the VM to the node network (as `net` asks), then launch it.
    Launch {
        cfg: Box<LaunchConfig>,
        net: NetRequest,
    },
    /// Stop the VM, attach it (same address and TAP as before), restore it from a snapshot.
    Restore {
        cfg: Box<LaunchConfig>,
        net: NetRequest,
        snapshot: String,
        generation: Generation,
    },
    Stop,
    /// Remove the VMM and its state, then detach the VM from the node network.
    Remove,
    Pause,
    Resume,
    Snapshot {
        name: String,
    },
    Exec(Box<ExecRequestRecord>),
    Stats,
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
    },
    Restored {
        vm: String,
        generation: Generation,
    },
}

#[derive(Clone)]
pub struct Ops {
    runtime: Arc<QemuRuntime>,
    network: Arc<Network>,
    busy: Arc<Mutex<HashSet<String>>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// Launches that failed, with why, until the VM leaves the intents.
    pub failed: Arc<Mutex<HashMap<String, String>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ops {
    pub fn new(runtime: Arc<QemuRuntime>, network: Arc<Network>) -> Self {
        Self {
            runtime,
            network,
            busy: Default::default(),
            outcomes: Default::default(),
            failed: Default::default(),
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

    /// Starts `op` for VM `vm` under `key` unless an operation already holds the key.
    pub fn spawn(&self, key: String, vm: String, op: Op) {
        if let Ok(mut b) = self.busy.lock() {
            if !b.insert(key.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = this.run(&vm, op);
            if let Some(o) = outcome {
                if let Ok(mut q) = this.outcomes.lock() {
                    q.push(o);
                }
            }
            if let Ok(mut b) = this.busy.lock() {
                b.remove(&key);
            }
        });
    }

    /// Records why `vm` could not be started.
    fn fail(&self, vm: &str, why: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert(vm.to_owned(), why);
        }
    }

    fn detach(&self, vm: &str) {
        if let Err(e) = self.network.detach(vm) {
            tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "network detach failed");
        }
    }

    fn run(&self, vm: &str, op: Op) -> Option<Outcome> {
        let rt = &*self.runtime;
        let warn = |what: &str, e: &firefleet_vmm::VmmError| {
            tracing::warn!(vm, error = %firefleet_types::error_chain(e), "{what} failed");
        };
        match op {
            Op::Launch { mut cfg, net } => {
                match self.network.attach(vm, &net) {
                    Ok(att) => cfg.net = att,
                    Err(e) => {
                        tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "network attach failed");
                        self.fail(vm, format!("network: {}", firefleet_types::error_chain(&e)));
                        return None;
                    }
                }
                if let Err(e) = rt.launch(&cfg) {
                    warn("launch", &e);
                    self.fail(vm, firefleet_types::error_chain(&e));
                    // Undo the attach unless a VMM came up after all (it may use the TAP).
                    let running = rt.observe(vm).map(|o| o.running).unwrap_or(false);
                    if cfg.net.is_some() && !running {
                        self.detach(vm);
                    }
                }
                None
            }
            Op::Restore {
                mut cfg,
                net,
                snapshot,
                generation,
            } => {
                // The restored instance replaces whatever runs now.
                if let Err(e) = rt.stop(vm, Duration::ZERO) {
                    warn("stop before restore", &e);
                }
                match self.network.attach(vm, &net) {
                    Ok(att) => cfg.net = att,
                    Err(e) => {
                        tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "network attach failed");
                        self.fail(
                            vm,
                            format!(
                                "restore from {snapshot:?}: network: {}",
                                firefleet_types::error_chain(&e)
                            ),
                        );
                        return Some(Outcome::Restored {
                            vm: vm.to_owned(),
                            generation,
                        });
                    }
                }
                let dir: PathBuf = rt.vm_dir(vm).join("snapshots").join(&snapshot);
                match rt.restore(&cfg, &dir) {
                    Ok(_) => Some(Outcome::Restored {
                        vm: vm.to_owned(),
                        generation,
                    }),
                    Err(e) => {
                        warn("restore", &e);
                        self.fail(
                            vm,
                            format!(
                                "restore from {snapshot:?}: {}",
                                firefleet_types::error_chain(&e)
                            ),
                        );
                        // Count the request as handled: the VM is reported Failed with the reason.
                        Some(Outcome::Restored {
                            vm: vm.to_owned(),
                            generation,
                        })
                    }
                }
            }
            Op::Stop => {
                if rt.observe(vm).map(|o| o.paused).unwrap_or(false) {
                    let _ = rt.resume(vm); // a paused guest cannot shut down gracefully
                }
                if let Err(e) = rt.stop(vm, STOP_GRACE) {
                    warn("stop", &e);
                }
                None
            }
            Op::Remove => {
                match rt.remove(vm) {
                    // The VMM is gone: its TAP and address can go too.
                    Ok(()) => self.detach(vm),
                    Err(e) => warn("remove", &e),
                }
                None
            }
            Op::Pause => {
                if let Err(e) = rt.pause(vm) {
                    warn("pause", &e);
                }
                None
            }
            Op::Resume => {
                if let Err(e) = rt.resume(vm) {
                    warn("resume", &e);
                }
                None
            }
            Op::Snapshot { name } => {
                // Taken already (the agent died before it could report it)? Then it is ready.
                let dir = rt.vm_dir(vm).join("snapshots").join(&name);
                if let Ok(m) = firefleet_vmm::qemu::snapshot::verify_snapshot(&dir) {
                    let bytes = m.files.iter().map(|f| f.size).sum();
                    let report = SnapshotReport {
                        phase: SnapshotPhase::Ready,
                        bytes: Some(bytes),
                        pause_ms: Some(m.pause_ms),
                        message: None,
                    };
                    return Some(Outcome::Snapshot {
                        vm: vm.to_owned(),
                        name,
                        report,
                    });
                }
                let was_paused = rt.observe(vm).map(|o| o.paused).unwrap_or(false);
                let report = match rt.snapshot(vm, &name, was_paused) {
                    Ok(info) => SnapshotReport {
                        phase: SnapshotPhase::Ready,
                        bytes: Some(info.bytes),
                        pause_ms: Some(info.pause_ms),
                        message: None,
                    },
                    Err(e) => {
                        warn("snapshot", &e);
                        SnapshotReport {
                            phase: SnapshotPhase::Failed,
                            bytes: None,
                            pause_ms: None,
                            message: Some(firefleet_types::error_chain(&e)),
                        }
                    }
                };
                Some(Outcome::Snapshot {
                    vm: vm.to_owned(),
                    name,
                    report,
                })
            }
            Op::Exec(rec) => Some(Outcome::Exec {
                vm: vm.to_owned(),
                id: rec.id.clone(),
                result: crate::guest::exec(rt, vm, &rec),
            }),
            Op::Stats => crate::guest::stats(rt, vm, now_ms()).map(|stats| Outcome::Stats {
                vm: vm.to_owned(),
                stats,
            }),
        }
    }
}
