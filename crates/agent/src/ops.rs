//! Blocking VMM operations, run on tokio's blocking pool at most one per key at a time, with
//! their outcomes queued for the reconciler to report.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use firefleet_api::{ExecRequestRecord, ExecResult, MigrationIntent, SnapshotReport, VmStats};
use firefleet_client::Client;
use firefleet_types::{DiskSpec, Generation, SnapshotPhase, VmRuntime};
use firefleet_vmm::LaunchConfig;

use crate::network::{NetRequest, Network};
use crate::runtimes::Runtimes;

/// How long a graceful stop may take before the VMM is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One thing to do.
pub enum Op {
    /// Make its disks, attach the VM to the node network (as `net` asks), then launch it.
    Launch {
        cfg: Box<LaunchConfig>,
        net: NetRequest,
        disks: Vec<DiskSpec>,
        runtime: VmRuntime,
        /// Start by restoring this snapshot of another VM (a function's template), not by
        /// booting.
        template: Option<firefleet_types::function::TemplateRef>,
    },
    /// Stop the VM, attach it (same address and TAP as before), restore it from a snapshot.
    Restore {
        cfg: Box<LaunchConfig>,
        net: NetRequest,
        disks: Vec<DiskSpec>,
        runtime: VmRuntime,
        snapshot: String,
        generation: Generation,
    },
    Stop,
    /// Kill the VMM at once (no graceful shutdown): its guest stopped answering.
    Kill,
    /// Remove the VMM and its state, then detach the VM from the node network.
    Remove,
    Pause,
    Resume,
    Snapshot {
        name: String,
    },
    Exec(Box<ExecRequestRecord>),
    Stats,
    /// Apply a running VM's network settings (limits, isolation) as its spec now says.
    Network(firefleet_types::NetworkSpec),
    /// Source side of a migration: snapshot (paused), upload.
    MigrateOut(Box<MigrationIntent>),
    /// Destination side: receive, make disks and network, restore, report.
    MigrateIn {
        migration: Box<MigrationIntent>,
        cfg: Box<LaunchConfig>,
        net: NetRequest,
    },
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
    /// The network settings now in force for a VM (or why they could not be applied).
    Network {
        vm: String,
        spec: firefleet_types::NetworkSpec,
        result: Result<(), String>,
    },
}

#[derive(Clone)]
pub struct Ops {
    runtimes: Arc<Runtimes>,
    network: Arc<Network>,
    data_dir: PathBuf,
    image_dir: PathBuf,
    client: Client,
    busy: Arc<Mutex<HashSet<String>>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// Launches that failed, with why, until the VM leaves the intents.
    pub failed: Arc<Mutex<HashMap<String, String>>>,
    /// Held while a function's template is fetched and unpacked (once per node).
    templates: Arc<Mutex<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ops {
    pub fn new(
        runtimes: Arc<Runtimes>,
        network: Arc<Network>,
        data_dir: PathBuf,
        image_dir: PathBuf,
        client: Client,
    ) -> Self {
        Self {
            runtimes,
            network,
            data_dir,
            image_dir,
            client,
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

    /// Starts `op` for VM `vm` under `key` unless an operation already holds the key.
    pub fn spawn(&self, key: String, vm: String, op: Op) {
        if let Ok(mut b) = self.busy.lock() {
            if !b.insert(key.clone()) {
                return;
            }
        }
        let this = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let outcome = this.run(&handle, &vm, op);
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

    /// The launch config with the VM's disks made, or why they could not be.
    fn with_disks(
        &self,
        vm: &str,
        mut cfg: Box<LaunchConfig>,
        runtime: VmRuntime,
        disks: &[DiskSpec],
    ) -> Result<Box<LaunchConfig>, String> {
        cfg.disks = crate::disks::prepare(&self.data_dir, &self.image_dir, vm, runtime, disks)?;
        Ok(cfg)
    }

    /// Gives the control plane a copy of snapshot `name` (best effort), so that the VM can be
    /// restored from it on another node should this one be lost.
    fn replicate(&self, handle: &tokio::runtime::Handle, vm: &str, name: &str) {
        let vm_dir = self.runtimes.vm_dir(vm);
        let result = crate::migrate::pack(&vm_dir, name).and_then(|archive| {
            let len = std::fs::metadata(&archive)
                .map_err(|e| format!("{}: {e}", archive.display()))?
                .len();
            let r = handle.block_on(async {
                let f = tokio::fs::File::open(&archive)
                    .await
                    .map_err(|e| e.to_string())?;
                self.client
                    .snapshot_upload(vm, name, f, len)
                    .await
                    .map_err(|e| firefleet_types::error_chain(&e))
            });
            let _ = std::fs::remove_file(&archive);
            r
        });
        match result {
            Ok(()) => tracing::info!(vm, snapshot = name, "snapshot copied to the control plane"),
            Err(e) => {
                tracing::warn!(vm, snapshot = name, error = %e, "copying the snapshot failed")
            }
        }
    }

    /// Starts `vm` by restoring a function's template (fetched from the control plane once per
    /// node, kept unpacked under `templates/`): a cold start. The clone gets this node's
    /// address and its own MAC over the guest channel.
    fn clone_from_template(
        &self,
        handle: &tokio::runtime::Handle,
        rt: &dyn firefleet_vmm::Runtime,
        vm: &str,
        runtime: VmRuntime,
        cfg: &LaunchConfig,
        t: &firefleet_types::function::TemplateRef,
    ) {
        let started = std::time::Instant::now();
        let dir = {
            let _one_at_a_time = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            let cache = self.data_dir.join("templates").join(t.vm.as_str());
            crate::migrate::receive(
                handle,
                &self.client,
                t.vm.as_str(),
                &cache,
                &t.snapshot,
                crate::migrate::Source::Replica(&t.snapshot),
            )
        };
        let result = dir.and_then(|dir| {
            rt.restore(cfg, &dir)
                .map_err(|e| format!("restore: {}", firefleet_types::error_chain(&e)))
        });
        match result {
            Ok(_) => {
                crate::migrate::mark_ready(&self.runtimes.dir_for(runtime, vm));
                if let Some(net) = &cfg.net {
                    crate::migrate::readdress(rt, vm, net);
                }
                tracing::info!(vm, template = %t.vm, ms = started.elapsed().as_millis() as u64, "started from the function's template");
            }
            Err(e) => {
                tracing::warn!(vm, template = %t.vm, error = %e, "starting from the template failed");
                self.fail(vm, format!("starting from template {}: {e}", t.vm));
                let running = rt.observe(vm).map(|o| o.running).unwrap_or(false);
                if cfg.net.is_some() && !running {
                    self.detach(vm);
                }
            }
        }
    }

    fn run(&self, handle: &tokio::runtime::Handle, vm: &str, op: Op) -> Option<Outcome> {
        let wanted = match &op {
            Op::Launch { runtime, .. } | Op::Restore { runtime, .. } => Some(*runtime),
            Op::MigrateIn { migration, .. } => Some(migration.spec.runtime),
            _ => None,
        };
        let rt = &*self.runtimes.for_vm(vm, wanted);
        let warn = |what: &str, e: &firefleet_vmm::VmmError| {
            tracing::warn!(vm, error = %firefleet_types::error_chain(e), "{what} failed");
        };
        match op {
            Op::Launch {
                cfg,
                net,
                disks,
                runtime,
                template,
            } => {
                if let Err(e) = self.runtimes.get(runtime) {
                    self.fail(vm, e);
                    return None;
                }
                let mut cfg = match self.with_disks(vm, cfg, runtime, &disks) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(vm, error = %e, "making disks failed");
                        self.fail(vm, e);
                        return None;
                    }
                };
                match self.network.attach(vm, &net) {
                    Ok(att) => cfg.net = att,
                    Err(e) => {
                        tracing::warn!(vm, error = %firefleet_types::error_chain(&e), "network attach failed");
                        self.fail(vm, format!("network: {}", firefleet_types::error_chain(&e)));
                        return None;
                    }
                }
                if let Some(t) = template {
                    self.clone_from_template(handle, rt, vm, runtime, &cfg, &t);
                    return None;
                }
                // A restart over a dead run: what it left (cgroups, guest channel) goes first.
                if rt.observe(vm).is_ok_and(|o| !o.running && o.pid.is_some()) {
                    if let Err(e) = rt.stop(vm, Duration::ZERO) {
                        warn("clearing the dead run", &e);
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
                cfg,
                net,
                disks,
                runtime,
                snapshot,
                generation,
            } => {
                let handled = Some(Outcome::Restored {
                    vm: vm.to_owned(),
                    generation,
                });
                let mut cfg = match self
                    .runtimes
                    .get(runtime)
                    .and_then(|_| self.with_disks(vm, cfg, runtime, &disks))
                {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail(vm, format!("restore from {snapshot:?}: {e}"));
                        return handled;
                    }
                };
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
                let vm_dir = self.runtimes.dir_for(runtime, vm);
                let mut dir: PathBuf = vm_dir.join("snapshots").join(&snapshot);
                let mut fetched = false;
                if firefleet_vmm::completed_snapshot(&dir).is_none() {
                    // Not on this node (its node was lost): the control plane's copy.
                    match crate::migrate::receive(
                        handle,
                        &self.client,
                        vm,
                        &vm_dir,
                        &snapshot,
                        crate::migrate::Source::Replica(&snapshot),
                    ) {
                        Ok(d) => {
                            dir = d;
                            fetched = true;
                        }
                        Err(e) => {
                            tracing::warn!(vm, error = %e, "fetching the snapshot's copy failed")
                        }
                    }
                }
                match rt.restore(&cfg, &dir) {
                    Ok(_) => {
                        if fetched {
                            // Restored on another node than it was taken on: its console here
                            // starts after the ready line, and the node has another subnet.
                            crate::migrate::mark_ready(&vm_dir);
                            if let Some(net) = &cfg.net {
                                crate::migrate::readdress(rt, vm, net);
                            }
                        }
                        Some(Outcome::Restored {
                            vm: vm.to_owned(),
                            generation,
                        })
                    }
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
            Op::Kill => {
                if let Err(e) = rt.stop(vm, Duration::ZERO) {
                    warn("kill", &e);
                }
                None
            }
            Op::Remove => {
                match rt.remove(vm) {
                    // The VMM is gone: its disks, TAP and address can go too.
                    Ok(()) => {
                        if let Err(e) = crate::disks::remove(&self.data_dir, vm) {
                            tracing::warn!(vm, error = %e, "removing the VM's disks failed");
                        }
                        self.detach(vm);
                    }
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
                let dir = self.runtimes.vm_dir(vm).join("snapshots").join(&name);
                if let Some(m) = firefleet_vmm::completed_snapshot(&dir) {
                    let report = SnapshotReport {
                        phase: SnapshotPhase::Ready,
                        bytes: Some(m.bytes),
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
                    Ok(info) => {
                        self.replicate(handle, vm, &name);
                        SnapshotReport {
                            phase: SnapshotPhase::Ready,
                            bytes: Some(info.bytes),
                            pause_ms: Some(info.pause_ms),
                            message: None,
                        }
                    }
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
            Op::MigrateOut(m) => {
                if m.migration.mode == firefleet_types::MigrationMode::Live {
                    crate::migrate::send_live(handle, &self.client, self.runtimes.qemu(), &m);
                } else {
                    let dir = self.runtimes.vm_dir(vm);
                    crate::migrate::send(handle, &self.client, rt, &dir, &m);
                }
                None
            }
            Op::MigrateIn {
                migration,
                cfg,
                net,
            } => {
                let kind = migration.spec.runtime;
                let prepared = self
                    .runtimes
                    .get(kind)
                    .and_then(|_| self.with_disks(vm, cfg, kind, &migration.spec.disks))
                    .and_then(|mut cfg| {
                        cfg.net = self.network.attach(vm, &net).map_err(|e| {
                            format!("network: {}", firefleet_types::error_chain(&e))
                        })?;
                        Ok(cfg)
                    });
                let dir = self.runtimes.dir_for(kind, vm);
                let done = match prepared {
                    Ok(cfg) if migration.migration.mode == firefleet_types::MigrationMode::Live => {
                        crate::migrate::receive_live(
                            handle,
                            &self.client,
                            self.runtimes.qemu(),
                            &migration,
                            &cfg,
                        )
                    }
                    Ok(cfg) => {
                        crate::migrate::restore(handle, &self.client, rt, &dir, &migration, &cfg)
                    }
                    Err(e) => {
                        let msg = format!("destination: {e}");
                        let r = crate::migrate::failed(msg.clone());
                        let _ = handle.block_on(self.client.migration_report(vm, &r));
                        Err(msg)
                    }
                };
                if done.is_err() {
                    // Undo what this node made; the VM stays on its source.
                    if rt.remove(vm).is_ok() {
                        let _ = crate::disks::remove(&self.data_dir, vm);
                        self.detach(vm);
                    }
                }
                None
            }
            Op::Network(spec) => {
                let result = self
                    .network
                    .update(vm, &spec)
                    .map_err(|e| firefleet_types::error_chain(&e));
                match &result {
                    Ok(()) => {
                        tracing::info!(vm, isolated = spec.isolated, egress_mbit = ?spec.egress_mbit, "network settings applied")
                    }
                    Err(e) => tracing::warn!(vm, error = %e, "applying network settings failed"),
                }
                Some(Outcome::Network {
                    vm: vm.to_owned(),
                    spec,
                    result,
                })
            }
            Op::Stats => crate::guest::stats(rt, &self.runtimes.vm_dir(vm), vm, now_ms()).map(
                |(stats, guest)| Outcome::Stats {
                    vm: vm.to_owned(),
                    stats,
                    guest,
                },
            ),
        }
    }
}
