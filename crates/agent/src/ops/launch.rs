//! Starting a VM: launch (booting, or cloning a function's template) and restore from a
//! snapshot. Each makes the launch config first (backend, image: resolved here, not in the
//! decision), then the disks and the network attachment, then starts the VMM; what a failed
//! start made is undone unless a VMM came up after all.

use std::path::Path;
use std::time::Duration;

use firefleet_api::VmIntent;
use firefleet_types::{error_chain, function::TemplateRef, Generation, VmRuntime};
use firefleet_vmm::{image::ImageStore, LaunchConfig, Runtime};

use super::{warn, Ops, Outcome};
use crate::control::Download;
use crate::network::NetRequest;
use crate::runtimes::Runtimes;

/// What the VM asks of the node network.
fn net_request(intent: &VmIntent) -> NetRequest {
    NetRequest {
        tenant: intent.spec.tenant.to_string(),
        spec: intent.spec.network,
    }
}

/// The launch config of the VM, without disks or network: its backend must be offered here and
/// its image be in the local store. The error is what the VM is reported failed with.
pub(crate) fn launch_config(
    intent: &VmIntent,
    image_dir: &Path,
    runtimes: &Runtimes,
) -> Result<LaunchConfig, String> {
    let spec = &intent.spec;
    runtimes.get(spec.runtime)?;
    let accel = runtimes.accel(spec.runtime);
    let image = ImageStore::open(image_dir)
        .and_then(|s| s.resolve(&spec.image))
        .map_err(|e| format!("image {}: {}", spec.image, error_chain(&e)))?;
    Ok(LaunchConfig {
        id: intent.id.as_str().to_owned(),
        vcpus: spec.resources.vcpus,
        memory_mib: spec.resources.memory_mib,
        image,
        cmd: spec.cmd.clone(),
        accel,
        net: None,
        disks: Vec::new(),
    })
}

/// Why a VM's config, disks or network could not be made.
pub(super) enum Unprepared {
    /// Its backend or image: nothing was made.
    Config(String),
    /// Its disks or network (the message names which).
    Host(String),
}

impl Ops {
    /// The VM's launch config with its disks made (blocking).
    pub(super) fn config_with_disks(&self, intent: &VmIntent) -> Result<LaunchConfig, Unprepared> {
        let vm = intent.id.as_str();
        let mut cfg =
            launch_config(intent, &self.image_dir, &self.runtimes).map_err(Unprepared::Config)?;
        cfg.disks = crate::disks::prepare(
            &self.data_dir,
            &self.image_dir,
            vm,
            intent.spec.runtime,
            &intent.spec.disks,
        )
        .map_err(Unprepared::Host)?;
        Ok(cfg)
    }

    /// Records why the VM could not be prepared if something was tried (its disks: a failed
    /// launch, after `context`); returns the message if nothing was (its backend or image),
    /// for the caller to report as is.
    pub(super) fn unprepared(&self, vm: &str, why: Unprepared, context: &str) -> Option<String> {
        match why {
            Unprepared::Config(e) => Some(e),
            Unprepared::Host(e) => {
                tracing::warn!(vm, error = %e, "making disks failed");
                self.fail(vm, format!("{context}{e}"));
                None
            }
        }
    }

    /// Attaches the VM to the node network as it asks (blocking).
    pub(super) fn attach(&self, intent: &VmIntent, cfg: &mut LaunchConfig) -> Result<(), String> {
        let vm = intent.id.as_str();
        match self.network.attach(vm, &net_request(intent)) {
            Ok(att) => {
                cfg.net = att;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(vm, error = %error_chain(&e), "network attach failed");
                Err(format!("network: {}", error_chain(&e)))
            }
        }
    }

    /// Undoes the network attachment of a VM whose start failed, unless a VMM came up after
    /// all (it may use the TAP).
    fn undo_attach(&self, rt: &dyn Runtime, vm: &str, cfg: &LaunchConfig) {
        let running = rt.observe(vm).map(|o| o.running).unwrap_or(false);
        if cfg.net.is_some() && !running {
            self.detach(vm);
        }
    }
}

/// Launches the VM: config, disks, network, then the VMM (or a clone of its function's
/// template). Failures are left in [`Ops::failed`].
pub(super) async fn launch(ops: &Ops, intent: VmIntent) -> Option<Outcome> {
    let vm = intent.id.as_str().to_owned();
    let runtime = intent.spec.runtime;
    let template = intent
        .spec
        .function
        .as_ref()
        .and_then(|f| f.template.clone());
    let cfg = ops
        .with_runtime(&vm, Some(runtime), move |ops, _, vm| {
            let mut cfg = match ops.config_with_disks(&intent) {
                Ok(c) => c,
                Err(why) => {
                    if let Some(e) = ops.unprepared(vm, why, "") {
                        ops.refuse(vm, e);
                    }
                    return None;
                }
            };
            match ops.attach(&intent, &mut cfg) {
                Ok(()) => Some(cfg),
                Err(e) => {
                    ops.fail(vm, e);
                    None
                }
            }
        })
        .await
        .flatten()?;
    if let Some(t) = template {
        clone_from_template(ops, &vm, runtime, cfg, &t).await;
        return None;
    }
    ops.with_runtime(&vm, Some(runtime), move |ops, rt, vm| {
        // A restart over a dead run: what it left (cgroups, guest channel) goes first.
        if rt.observe(vm).is_ok_and(|o| !o.running && o.pid.is_some()) {
            if let Err(e) = rt.stop(vm, Duration::ZERO) {
                warn(vm, "clearing the dead run", &e);
            }
        }
        if let Err(e) = rt.launch(&cfg) {
            warn(vm, "launch", &e);
            ops.fail(vm, error_chain(&e));
            ops.undo_attach(rt, vm, &cfg);
        }
    })
    .await;
    None
}

/// Starts `vm` by restoring a function's template (fetched from the control plane once per
/// node, kept unpacked under `templates/`): a cold start. The clone gets this node's
/// address and its own MAC over the guest channel.
async fn clone_from_template(
    ops: &Ops,
    vm: &str,
    runtime: VmRuntime,
    cfg: LaunchConfig,
    t: &TemplateRef,
) {
    let started = std::time::Instant::now();
    let dir = {
        let _one_at_a_time = ops.templates.lock().await;
        let cache = ops.data_dir.join("templates").join(t.vm.as_str());
        crate::migrate::receive(
            &*ops.control,
            t.vm.as_str(),
            &cache,
            &t.snapshot,
            Download::Replica(&t.snapshot),
        )
        .await
    };
    let template = t.vm.clone();
    ops.with_runtime(vm, Some(runtime), move |ops, rt, vm| {
        let result = dir.and_then(|dir| {
            rt.restore(&cfg, &dir)
                .map_err(|e| format!("restore: {}", error_chain(&e)))
        });
        match result {
            Ok(_) => {
                crate::migrate::mark_ready(&ops.runtimes.dir_for(runtime, vm));
                if let Some(net) = &cfg.net {
                    crate::migrate::readdress(rt, vm, net);
                }
                tracing::info!(vm, %template, ms = started.elapsed().as_millis() as u64, "started from the function's template");
            }
            Err(e) => {
                tracing::warn!(vm, %template, error = %e, "starting from the template failed");
                ops.fail(vm, format!("starting from template {template}: {e}"));
                ops.undo_attach(rt, vm, &cfg);
            }
        }
    })
    .await;
}

/// Replaces whatever runs with the VM restored from `snapshot` (this node's, else the control
/// plane's copy). The request counts as handled ([`Outcome::Restored`]) once tried: a failure
/// is reported with the VM, as Failed. A VM whose backend or image this node lacks is
/// [`Outcome::Refused`]: nothing is tried, and the restore is tried again later.
pub(super) async fn restore(
    ops: &Ops,
    intent: VmIntent,
    snapshot: String,
    generation: Generation,
) -> Option<Outcome> {
    let vm = intent.id.as_str().to_owned();
    let runtime = intent.spec.runtime;
    let handled = Some(Outcome::Restored {
        vm: vm.clone(),
        generation,
    });
    let name = snapshot.clone();
    let prepared = ops
        .with_runtime(&vm, Some(runtime), move |ops, rt, vm| {
            // Err(Some(why)): refused, nothing tried; Err(None): failed, recorded.
            let mut cfg = ops
                .config_with_disks(&intent)
                .map_err(|why| ops.unprepared(vm, why, &format!("restore from {name:?}: ")))?;
            // The restored instance replaces whatever runs now.
            if let Err(e) = rt.stop(vm, Duration::ZERO) {
                warn(vm, "stop before restore", &e);
            }
            if let Err(e) = ops.attach(&intent, &mut cfg) {
                ops.fail(vm, format!("restore from {name:?}: {e}"));
                return Err(None);
            }
            let vm_dir = ops.runtimes.dir_for(runtime, vm);
            let dir = vm_dir.join("snapshots").join(&name);
            let here = firefleet_vmm::completed_snapshot(&dir).is_some();
            Ok((cfg, vm_dir, dir, here))
        })
        .await?;
    let (cfg, vm_dir, mut dir, here) = match prepared {
        Ok(p) => p,
        Err(None) => return handled,
        Err(Some(message)) => {
            return Some(Outcome::Refused {
                vm,
                generation,
                message,
            })
        }
    };
    let mut fetched = false;
    if !here {
        // Not on this node (its node was lost): the control plane's copy.
        match crate::migrate::receive(
            &*ops.control,
            &vm,
            &vm_dir,
            &snapshot,
            Download::Replica(&snapshot),
        )
        .await
        {
            Ok(d) => {
                dir = d;
                fetched = true;
            }
            Err(e) => tracing::warn!(vm, error = %e, "fetching the snapshot's copy failed"),
        }
    }
    ops.with_runtime(&vm, Some(runtime), move |ops, rt, vm| {
        restore_from(ops, rt, vm, &cfg, &vm_dir, &dir, fetched, &snapshot)
    })
    .await?;
    handled
}

/// The restore itself (blocking).
#[allow(clippy::too_many_arguments)]
fn restore_from(
    ops: &Ops,
    rt: &dyn Runtime,
    vm: &str,
    cfg: &LaunchConfig,
    vm_dir: &Path,
    dir: &Path,
    fetched: bool,
    snapshot: &str,
) {
    match rt.restore(cfg, dir) {
        Ok(_) => {
            if fetched {
                // Restored on another node than it was taken on: its console here starts after
                // the ready line, and the node has another subnet.
                crate::migrate::mark_ready(vm_dir);
                if let Some(net) = &cfg.net {
                    crate::migrate::readdress(rt, vm, net);
                }
            }
        }
        Err(e) => {
            warn(vm, "restore", &e);
            // Counted as handled all the same: the VM is reported Failed with the reason.
            ops.fail(
                vm,
                format!("restore from {snapshot:?}: {}", error_chain(&e)),
            );
        }
    }
}
