//! Reconciling the host to the intents: the core of the agent.
//!
//! For each VM placed on this node, compare what the control plane wants (desired state,
//! deletion) with what the runtime observes (state directory, process, guest readiness, exit
//! status), act (launch, stop, remove) and report the observed phase. VMM work is blocking and
//! may take seconds (a graceful stop), so it runs on the blocking pool, at most one operation per
//! VM at a time. Local VMs that the intents no longer list are removed.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use firefleet_api::{VmIntent, VmStatusReport};
use firefleet_client::Client;
use firefleet_types::{Accel, DesiredState, VmId, VmPhase};
use firefleet_vmm::{image::ImageStore, LaunchConfig, Observation, QemuRuntime, Runtime};

/// How long a graceful stop may take before the VMM is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Largest console chunk uploaded at once.
const CONSOLE_CHUNK: usize = 64 * 1024;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Local {
    /// The last report the server accepted.
    reported: Option<VmStatusReport>,
    /// Where the server's copy of the console ends (None: not asked yet).
    console_end: Option<u64>,
    launched_ms: Option<u64>,
    running_ms: Option<u64>,
    stopped_ms: Option<u64>,
}

pub struct Reconciler {
    client: Client,
    runtime: Arc<QemuRuntime>,
    image_dir: PathBuf,
    accel: Accel,
    local: HashMap<VmId, Local>,
    busy: Arc<Mutex<HashSet<String>>>,
    /// Launches that failed, with why (reported as Failed).
    failed: Arc<Mutex<HashMap<String, String>>>,
    starting: bool,
}

/// What the reconciler decided to do for one VM.
enum Action {
    Launch(LaunchConfig),
    Stop,
    Remove,
}

impl Reconciler {
    pub fn new(
        client: Client,
        runtime: Arc<QemuRuntime>,
        image_dir: PathBuf,
        accel: Accel,
    ) -> Self {
        Self {
            client,
            runtime,
            image_dir,
            accel,
            local: HashMap::new(),
            busy: Default::default(),
            failed: Default::default(),
            starting: false,
        }
    }

    /// Whether a VM is booting (the caller then reconciles more often to see it become ready).
    pub fn has_starting(&self) -> bool {
        self.starting
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy.lock().map(|b| b.contains(id)).unwrap_or(true)
    }

    /// One pass over the intents.
    pub async fn reconcile(&mut self, intents: &[VmIntent]) {
        self.starting = false;
        let wanted: HashSet<&str> = intents.iter().map(|i| i.id.as_str()).collect();
        // Local VMs the control plane no longer lists for this node: deleted or moved away.
        let rt = self.runtime.clone();
        if let Ok(Ok(local_ids)) = tokio::task::spawn_blocking(move || rt.list()).await {
            for id in local_ids {
                if !wanted.contains(id.as_str()) && !self.is_busy(&id) {
                    tracing::info!(vm = %id, "not in the intents for this node any more: removing");
                    self.spawn_op(id, Action::Remove);
                }
            }
        }
        for intent in intents {
            self.reconcile_vm(intent).await;
        }
        self.local.retain(|id, _| wanted.contains(id.as_str()));
        if let Ok(mut f) = self.failed.lock() {
            f.retain(|id, _| wanted.contains(id.as_str()));
        }
    }

    async fn reconcile_vm(&mut self, intent: &VmIntent) {
        let id = intent.id.as_str().to_owned();
        if self.is_busy(&id) {
            if intent.phase == VmPhase::Starting || intent.phase == VmPhase::Scheduled {
                self.starting = true;
            }
            return;
        }
        let rt = self.runtime.clone();
        let obs_id = id.clone();
        let obs = match tokio::task::spawn_blocking(move || rt.observe(&obs_id)).await {
            Ok(Ok(o)) => Some(o),
            Ok(Err(firefleet_vmm::VmmError::NotFound(_))) => None,
            Ok(Err(e)) => {
                tracing::warn!(vm = %id, error = %e, "observing failed");
                return;
            }
            Err(_) => return,
        };
        let local = self.local.entry(intent.id.clone()).or_default();
        let now = now_ms();
        let launch_error = self.failed.lock().ok().and_then(|f| f.get(&id).cloned());
        let (phase, message, exit_code, action) = match launch_error {
            Some(err) if obs.is_none() && !intent.deleting && !intent.phase.is_terminal() => {
                local.stopped_ms.get_or_insert(now);
                (
                    VmPhase::Failed,
                    Some(format!("launch failed: {err}")),
                    None,
                    None,
                )
            }
            _ => decide(
                intent,
                obs.as_ref(),
                local,
                now,
                &self.image_dir,
                self.accel,
            ),
        };
        if phase == VmPhase::Starting || matches!(action, Some(Action::Launch(_))) {
            self.starting = true;
        }
        let report = VmStatusReport {
            generation: intent.generation,
            phase,
            accel: (phase != VmPhase::Pending && obs.is_some())
                .then_some(self.accel)
                .or_else(|| matches!(action, Some(Action::Launch(_))).then_some(self.accel)),
            exit_code,
            message,
            launched_ms: local.launched_ms,
            running_ms: local.running_ms,
            stopped_ms: local.stopped_ms,
            removed: intent.deleting && obs.is_none(),
        };
        let terminal_with_no_state =
            intent.phase.is_terminal() && obs.is_none() && !intent.deleting;
        if local.reported.as_ref() != Some(&report)
            && !(terminal_with_no_state && report.phase == intent.phase)
        {
            match self.client.report_status(&id, &report).await {
                Ok(()) => local.reported = Some(report),
                Err(e) => tracing::warn!(vm = %id, error = %e, "status report refused"),
            }
        }
        if obs.is_some() {
            self.upload_console(&intent.id).await;
        }
        if let Some(action) = action {
            self.spawn_op(id, action);
        }
    }

    async fn upload_console(&mut self, id: &VmId) {
        let Some(local) = self.local.get_mut(id) else {
            return;
        };
        let end = match local.console_end {
            Some(e) => e,
            None => match self.client.upload_console(id.as_str(), 0, Vec::new()).await {
                Ok(e) => e,
                Err(_) => return,
            },
        };
        local.console_end = Some(end);
        let rt = self.runtime.clone();
        let vid = id.as_str().to_owned();
        let chunk =
            match tokio::task::spawn_blocking(move || rt.console(&vid, end, CONSOLE_CHUNK)).await {
                Ok(Ok(c)) => c,
                _ => return,
            };
        if chunk.data.is_empty() {
            return;
        }
        match self
            .client
            .upload_console(id.as_str(), end, chunk.data)
            .await
        {
            Ok(e) => local.console_end = Some(e),
            Err(e) => tracing::debug!(vm = %id, error = %e, "console upload failed"),
        }
    }

    fn spawn_op(&self, id: String, action: Action) {
        if let Ok(mut b) = self.busy.lock() {
            if !b.insert(id.clone()) {
                return;
            }
        }
        let rt = self.runtime.clone();
        let busy = self.busy.clone();
        let failed = self.failed.clone();
        tokio::task::spawn_blocking(move || {
            let r = match &action {
                Action::Launch(cfg) => rt.launch(cfg).map(|_| ()),
                Action::Stop => rt.stop(&id, STOP_GRACE),
                Action::Remove => rt.remove(&id),
            };
            if let Err(e) = r {
                tracing::warn!(vm = %id, error = %e, "vmm operation failed");
                if matches!(action, Action::Launch(_)) {
                    if let Ok(mut f) = failed.lock() {
                        f.insert(id.clone(), error_chain(&e));
                    }
                }
            }
            if let Ok(mut b) = busy.lock() {
                b.remove(&id);
            }
        });
    }
}

/// Decides the phase to report and the action to take for one VM. Pure apart from image lookup.
fn decide(
    intent: &VmIntent,
    obs: Option<&Observation>,
    local: &mut Local,
    now: u64,
    image_dir: &std::path::Path,
    accel: Accel,
) -> (VmPhase, Option<String>, Option<i32>, Option<Action>) {
    let spec = &intent.spec;
    match obs {
        // Being deleted.
        _ if intent.deleting => match obs {
            Some(_) => (stopping_or(intent.phase), None, None, Some(Action::Remove)),
            None => {
                let phase = if intent.phase == VmPhase::Failed {
                    VmPhase::Failed
                } else {
                    VmPhase::Stopped
                };
                local.stopped_ms.get_or_insert(now);
                (phase, None, None, None)
            }
        },
        // Exists locally.
        Some(o) => {
            if o.running {
                if spec.desired == DesiredState::Stopped {
                    return (VmPhase::Stopping, None, None, Some(Action::Stop));
                }
                if o.guest_ready {
                    local.running_ms.get_or_insert(now);
                    (VmPhase::Running, None, None, None)
                } else {
                    (VmPhase::Starting, None, None, None)
                }
            } else {
                local.stopped_ms.get_or_insert(now);
                if spec.desired == DesiredState::Stopped {
                    (
                        VmPhase::Stopped,
                        Some("stopped".to_owned()),
                        o.guest_exit_code,
                        None,
                    )
                } else if o.powered_off || o.guest_exit_code.is_some() {
                    let msg = o
                        .guest_exit_code
                        .map(|c| format!("command exited with status {c}"));
                    (VmPhase::Stopped, msg, o.guest_exit_code, None)
                } else {
                    let why = o
                        .vmm_exit
                        .clone()
                        .unwrap_or_else(|| "unknown cause".to_owned());
                    (
                        VmPhase::Failed,
                        Some(format!("the VMM process exited unexpectedly: {why}")),
                        None,
                        None,
                    )
                }
            }
        }
        // Nothing here yet.
        None => match intent.phase {
            VmPhase::Scheduled if spec.desired == DesiredState::Running => {
                let image = ImageStore::open(image_dir).and_then(|s| s.resolve(&spec.image));
                match image {
                    Ok(image) => {
                        local.launched_ms.get_or_insert(now);
                        let cfg = LaunchConfig {
                            id: intent.id.as_str().to_owned(),
                            vcpus: spec.resources.vcpus,
                            memory_mib: spec.resources.memory_mib,
                            image,
                            cmd: spec.cmd.clone(),
                            accel,
                            net: None,
                            disks: Vec::new(),
                        };
                        (VmPhase::Starting, None, None, Some(Action::Launch(cfg)))
                    }
                    Err(e) => (
                        VmPhase::Failed,
                        Some(format!("image {}: {e}", spec.image)),
                        None,
                        None,
                    ),
                }
            }
            VmPhase::Scheduled | VmPhase::Stopping => {
                local.stopped_ms.get_or_insert(now);
                (VmPhase::Stopped, None, None, None)
            }
            VmPhase::Starting | VmPhase::Running => (
                VmPhase::Failed,
                Some("the VM's state directory is gone from the node".to_owned()),
                None,
                None,
            ),
            p => (p, None, None, None),
        },
    }
}

fn stopping_or(phase: VmPhase) -> VmPhase {
    if phase.is_terminal() {
        phase
    } else {
        VmPhase::Stopping
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
