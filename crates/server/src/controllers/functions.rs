//! The functions controller: makes each function's template and keeps the right number of
//! instances warm.
//!
//! Prepare: functions, VMs and nodes from the store, and from the gateway what happened since
//! the last tick (arrivals by region, peak demand, cold starts) and each instance's load and
//! idle time. Plan: the autoscaler engine ([`firefleet_autoscaler`], pure) says how many warm
//! instances each function wants per region and until when each idle instance is kept.
//! Execute: new instances are VMs restored from the function's template (placed by the
//! scheduling controller like any VM: the region is a placement constraint); idle instances
//! past their keep-alive are drained in the gateway, then deleted.
//!
//! Deploying a function: boot its template VM, snapshot it once its guest is ready (the agent
//! copies the snapshot to the server, so instances on any node can be restored from it), mark
//! the function Ready and stop the template VM. Every step is read back from the store, so a
//! restart at any point carries on.
//!
//! Invocations that wait for an instance wake this controller at once (`Gateway::demand`), and
//! whatever the engine says, there are enough instances (up to `max`) for what is in flight and
//! waiting.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use firefleet_autoscaler::{Autoscaler, EngineConfig, FunctionParams, InstanceInfo, Sample};
use firefleet_types::{
    function::{FunctionTemplate, TemplateRef},
    DesiredState, Function, FunctionPhase, NodeInfo, Snapshot, SnapshotPhase, Vm, VmPhase,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::app::functions::{function_vm_spec, function_vms, node_region, FnKey};
use crate::repo::{self, RepoError};
use crate::{now_ms, ApiError, AppState};

/// The snapshot name of a function's template.
const TEMPLATE_SNAPSHOT: &str = "template";
/// Shortest time between two runs woken by demand.
const MIN_GAP: Duration = Duration::from_millis(100);

/// How functions are scaled (`server --fn-*` flags).
#[derive(Debug, Clone)]
pub struct FunctionsConfig {
    /// The engine's tick.
    pub tick: Duration,
    /// The engine's histogram bin and forecast step.
    pub bin: Duration,
    /// Keep-alive of an idle instance of a function with too little history.
    pub default_keep_alive: Duration,
    /// How long an invocation waits for an instance before it fails.
    pub hold: Duration,
    /// The scaling policy (`firefleet`, `fixed-10m`, `hybrid`, `knative`).
    pub policy: firefleet_autoscaler::PolicyKind,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(2),
            bin: Duration::from_secs(60),
            default_keep_alive: Duration::from_secs(600),
            hold: Duration::from_secs(60),
            policy: firefleet_autoscaler::PolicyKind::FireFleet,
        }
    }
}

/// Starts the controller.
pub(crate) fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let cfg = state.functions.clone();
        let engine_cfg = engine_config(&cfg);
        let mut ctl = Controller {
            engine: Autoscaler::new(engine_cfg),
            known: HashSet::new(),
        };
        let mut next_tick = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            let tick = now >= next_tick;
            if tick {
                next_tick = now + cfg.tick;
            }
            if let Err(e) = ctl.reconcile(&state, tick).await {
                tracing::warn!(controller = "functions", error = %e, "reconcile failed; will retry");
            }
            let demand = state.gateway.demand.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick) => {}
                _ = demand => tokio::time::sleep(MIN_GAP).await,
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}

/// The engine's configuration. Its policies' windows are set for one-minute bins (the
/// trace's, and the default here); a shorter `--fn-bin-secs` shrinks them in proportion, so the
/// same policy runs on a compressed clock (tests and demos).
fn engine_config(cfg: &FunctionsConfig) -> EngineConfig {
    let mut e = EngineConfig::new(cfg.policy);
    let bin_ms = cfg.bin.as_millis().max(1) as u64;
    let scale = |ms: &mut u64| *ms = (*ms as u128 * bin_ms as u128 / 60_000).max(1) as u64;
    if bin_ms != 60_000 {
        let f = &mut e.firefleet;
        for ms in [
            &mut f.rare_keep_alive_ms,
            &mut f.extra_keep_alive_ms,
            &mut f.pool_window_ms,
            &mut f.panic_hold_ms,
            &mut f.range_ms,
            &mut e.hybrid.range_ms,
            &mut e.knative.stable_window_ms,
            &mut e.knative.scale_to_zero_grace_ms,
        ] {
            scale(ms);
        }
        if let firefleet_autoscaler::PolicyKind::FixedKeepAlive { keep_alive_ms } = &mut e.policy {
            scale(keep_alive_ms);
        }
    }
    e.tick_ms = cfg.tick.as_millis() as u64;
    e.bin_ms = bin_ms;
    e.default_keep_alive_ms = cfg.default_keep_alive.as_millis() as u64;
    e
}

struct Controller {
    engine: Autoscaler,
    known: HashSet<String>,
}

fn engine_name(k: &FnKey) -> String {
    format!("{}/{}", k.0, k.1)
}

fn is_alive(vm: &Vm) -> bool {
    !vm.deleting
        && matches!(
            vm.status.phase,
            VmPhase::Pending | VmPhase::Scheduled | VmPhase::Starting | VmPhase::Running
        )
}

/// A VM name for a function's VM: the function's name (shortened to fit) and a suffix.
fn vm_name(function: &str, suffix: &str) -> String {
    let room = 63 - suffix.len() - 1;
    let base: String = function.chars().take(room).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

impl Controller {
    async fn reconcile(&mut self, state: &AppState, tick: bool) -> Result<(), ApiError> {
        let funcs = repo::list_functions(state).await?;
        let (vms, _) = repo::list_vms(state).await?;
        let (nodes, _) = repo::list_json::<NodeInfo>(state, "/nodes/").await?;
        // VMs of functions that are gone (removed while this controller was down, say).
        for vm in &vms {
            if let Some(b) = &vm.spec.function {
                let owner = funcs
                    .iter()
                    .any(|f| f.spec.tenant == vm.spec.tenant && f.spec.name == b.function);
                if !owner && !vm.deleting {
                    crate::app::vms::remove(state, vm).await?;
                }
            }
        }
        let mut live = HashSet::new();
        let mut samples = Vec::new();
        let mut instances: BTreeMap<String, Vec<InstanceInfo>> = BTreeMap::new();
        let mut ready = Vec::new();
        for f in &funcs {
            let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
            let name = engine_name(&key);
            live.insert(name.clone());
            match f.status.phase {
                FunctionPhase::Deploying => self.deploy(state, f, &vms).await?,
                FunctionPhase::Failed => {}
                FunctionPhase::Ready => {
                    let Some(tpl) = &f.status.template else {
                        continue;
                    };
                    if !vms.iter().any(|vm| vm.id == tpl.vm && !vm.deleting) {
                        // Its template VM (and with it the snapshot's copy) was removed: make
                        // the template again.
                        tracing::warn!(function = %f.spec.name, vm = %tpl.vm, "template gone; deploying again");
                        let gone = tpl.vm.clone();
                        repo::update_function(state, &f.spec.tenant, &f.spec.name, |g| {
                            if g.status.template.as_ref().is_none_or(|t| t.vm != gone) {
                                return false;
                            }
                            g.status.phase = FunctionPhase::Deploying;
                            g.status.template = None;
                            g.status.message = Some("its template VM was removed".to_owned());
                            true
                        })
                        .await?;
                        continue;
                    }
                    self.engine.upsert_function(
                        &name,
                        FunctionParams {
                            min: f.spec.min,
                            max: f.spec.max,
                            concurrency: f.spec.concurrency,
                            regions: f.spec.regions.clone(),
                            memory_mib: f.spec.resources.memory_mib as u32,
                        },
                    );
                    self.known.insert(name.clone());
                    self.sync(state, f, tpl, &vms, &nodes).await?;
                    if tick {
                        let t = state.gateway.take_tick(&key);
                        for (region, n) in &t.arrivals {
                            samples.push(Sample {
                                function: name.clone(),
                                region: region.clone(),
                                invocations: *n,
                                peak_in_flight: 0,
                                cold_starts: 0,
                                in_flight_ms: 0,
                            });
                        }
                        samples.push(Sample {
                            function: name.clone(),
                            region: String::new(),
                            invocations: 0,
                            peak_in_flight: t.peak_demand,
                            cold_starts: t.cold_starts,
                            in_flight_ms: t.in_flight_ms,
                        });
                        let infos = state.gateway.with(&key, |st| {
                            st.instances
                                .iter()
                                .map(|(id, i)| InstanceInfo {
                                    id: id.to_string(),
                                    region: i.region.clone(),
                                    in_flight: i.in_flight,
                                    idle_since_ms: i.idle_since_ms.filter(|_| i.in_flight == 0),
                                    ready: i.ready,
                                })
                                .collect()
                        });
                        instances.insert(name.clone(), infos);
                    }
                    ready.push((key, f));
                }
            }
        }
        // Functions gone from the store leave the engine and the gateway.
        for gone in self.known.difference(&live).cloned().collect::<Vec<_>>() {
            self.engine.remove_function(&gone);
            self.known.remove(&gone);
        }
        for key in state.gateway.keys() {
            if !live.contains(&engine_name(&key)) {
                state.gateway.forget(&key);
            }
        }
        if tick {
            // A function the engine says nothing about wants nothing warm.
            for (key, _) in &ready {
                state.gateway.with(key, |st| {
                    st.wanted.clear();
                    st.deadlines.clear();
                });
            }
            for d in self.engine.tick(now_ms(), &samples, &instances) {
                let Some((key, _)) = ready.iter().find(|(k, _)| engine_name(k) == d.function)
                else {
                    continue;
                };
                state.gateway.with(key, |st| {
                    st.wanted = d.wanted.clone();
                    st.reason = Some(d.reason.clone());
                    st.deadlines = d
                        .keep_alive_until_ms
                        .iter()
                        .filter_map(|(id, t)| Some((id.parse().ok()?, *t)))
                        .collect();
                });
            }
        }
        for (key, f) in ready {
            self.scale(state, &key, f, &vms).await?;
        }
        Ok(())
    }

    /// Template steps: boot, snapshot once ready, then Ready (and the template VM stopped).
    async fn deploy(&mut self, state: &AppState, f: &Function, vms: &[Vm]) -> Result<(), ApiError> {
        let tpl_name = vm_name(&f.spec.name, &format!("tpl{}", f.generation.0));
        let tpl = function_vms(vms, &f.spec).find(|vm| vm.spec.name == tpl_name);
        let Some(vm) = tpl else {
            let spec = function_vm_spec(f, tpl_name, f.spec.regions.clone(), None);
            match crate::app::vms::create(state, spec).await {
                Ok(vm) => {
                    tracing::info!(function = %f.spec.name, vm = %vm.id, "booting the template")
                }
                Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            state.kick.notify_waiters();
            return Ok(());
        };
        let fail = |message: String| {
            let (tenant, name) = (f.spec.tenant.clone(), f.spec.name.clone());
            let generation = f.generation;
            async move {
                tracing::warn!(function = %name, %message, "deploy failed");
                repo::update_function(state, &tenant, &name, |g| {
                    if g.generation != generation || g.status.phase != FunctionPhase::Deploying {
                        return false;
                    }
                    g.status.phase = FunctionPhase::Failed;
                    g.status.message = Some(message.clone());
                    true
                })
                .await
            }
        };
        match vm.status.phase {
            VmPhase::Failed | VmPhase::Stopped if vm.spec.desired == DesiredState::Running => {
                fail(format!(
                    "the template VM {} {}: {}",
                    vm.spec.name,
                    if vm.status.phase == VmPhase::Failed {
                        "failed"
                    } else {
                        "stopped"
                    },
                    vm.status.message.as_deref().unwrap_or("no reason given")
                ))
                .await?;
                return Ok(());
            }
            VmPhase::Running => {}
            _ => return Ok(()),
        }
        let snaps = repo::list_snapshots(state, &vm.id).await?;
        match snaps.iter().find(|s| s.name == TEMPLATE_SNAPSHOT) {
            None => {
                let Some(node) = vm.status.node.clone() else {
                    return Ok(());
                };
                let snap = Snapshot::requested(
                    vm.id.clone(),
                    TEMPLATE_SNAPSHOT.to_owned(),
                    node,
                    now_ms(),
                );
                match repo::create_snapshot(state, &snap).await {
                    Ok(()) | Err(RepoError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(function = %f.spec.name, vm = %vm.id, "snapshotting the template");
            }
            Some(s) if s.phase == SnapshotPhase::Failed => {
                fail(format!(
                    "snapshotting the template failed: {}",
                    s.message.as_deref().unwrap_or("no reason given")
                ))
                .await?;
            }
            Some(s) if s.phase == SnapshotPhase::Ready && s.replicated => {
                let template = FunctionTemplate {
                    vm: vm.id.clone(),
                    snapshot: s.name.clone(),
                    ready_ms: now_ms(),
                };
                let generation = f.generation;
                repo::update_function(state, &f.spec.tenant, &f.spec.name, |g| {
                    if g.generation != generation || g.status.phase != FunctionPhase::Deploying {
                        return false;
                    }
                    g.status.phase = FunctionPhase::Ready;
                    g.status.message = None;
                    g.status.template = Some(template.clone());
                    true
                })
                .await?;
                // The template VM has done its work: its snapshot is what instances start from.
                repo::update_vm(state, &vm.id, |vm| {
                    if vm.spec.desired == DesiredState::Stopped {
                        return Ok(false);
                    }
                    vm.spec.desired = DesiredState::Stopped;
                    vm.generation = vm.generation.next();
                    Ok(true)
                })
                .await?;
                state.kick.notify_waiters();
                state.gateway.demand.notify_one();
                tracing::info!(function = %f.spec.name, "template ready");
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Tells the gateway the instances as they are now; removes broken ones and old templates.
    async fn sync(
        &mut self,
        state: &AppState,
        f: &Function,
        tpl: &FunctionTemplate,
        vms: &[Vm],
        nodes: &[NodeInfo],
    ) -> Result<(), ApiError> {
        let key: FnKey = (f.spec.tenant.clone(), f.spec.name.clone());
        let mut seen = Vec::new();
        for vm in function_vms(vms, &f.spec) {
            let Some(b) = &vm.spec.function else { continue };
            let current = b.template.as_ref().is_some_and(|t| t.vm == tpl.vm);
            if b.template.is_none() {
                // An old template VM (the function was redeployed): gone once the new one is.
                if vm.id != tpl.vm && !vm.deleting {
                    crate::app::vms::remove(state, vm).await?;
                }
                continue;
            }
            if vm.deleting {
                continue;
            }
            if matches!(vm.status.phase, VmPhase::Failed | VmPhase::Stopped) {
                tracing::warn!(function = %f.spec.name, vm = %vm.id, phase = ?vm.status.phase,
                    message = vm.status.message.as_deref().unwrap_or(""), "instance lost; removing it");
                crate::app::vms::remove(state, vm).await?;
                continue;
            }
            if let Some(node) = &vm.status.node {
                seen.push((
                    vm.id.clone(),
                    node.clone(),
                    node_region(nodes, node),
                    // Instances of an older template take nothing new and go once idle.
                    current && vm.status.phase == VmPhase::Running,
                ));
            }
        }
        state.gateway.sync(&key, seen);
        Ok(())
    }

    /// Starts or stops instances so the function has what the engine (and the waiting demand)
    /// asks for.
    async fn scale(
        &mut self,
        state: &AppState,
        key: &FnKey,
        f: &Function,
        vms: &[Vm],
    ) -> Result<(), ApiError> {
        let Some(tpl) = &f.status.template else {
            return Ok(());
        };
        let now = now_ms();
        let (wanted, deadlines, demand, waiting_regions, gw) = state.gateway.with(key, |st| {
            (
                st.wanted.clone(),
                st.deadlines.clone(),
                st.demand(),
                st.waiting.keys().cloned().collect::<Vec<_>>(),
                st.instances.clone(),
            )
        });
        let instances: Vec<&Vm> = function_vms(vms, &f.spec)
            .filter(|vm| {
                vm.spec
                    .function
                    .as_ref()
                    .and_then(|b| b.template.as_ref())
                    .is_some_and(|t| t.vm == tpl.vm)
            })
            .filter(|vm| is_alive(vm))
            .collect();
        let floor = demand.div_ceil(f.spec.concurrency);
        let target = wanted
            .values()
            .sum::<u32>()
            .max(floor)
            .max(f.spec.min)
            .min(f.spec.max);
        let alive = instances.len() as u32;
        if alive < target {
            // Regions short of what the engine wants first, then where requests wait.
            let mut per_region: BTreeMap<String, u32> = BTreeMap::new();
            for vm in &instances {
                let r = vm
                    .spec
                    .placement
                    .allowed_regions
                    .first()
                    .cloned()
                    .unwrap_or_default();
                *per_region.entry(r).or_default() += 1;
            }
            let mut regions = Vec::new();
            for (r, w) in &wanted {
                let have = per_region.get(r).copied().unwrap_or(0);
                for _ in have..*w {
                    regions.push(r.clone());
                }
            }
            regions.extend(
                waiting_regions
                    .into_iter()
                    .filter(|r| f.spec.regions.is_empty() || f.spec.regions.contains(r)),
            );
            for i in 0..(target - alive) as usize {
                let region = regions.get(i).cloned().unwrap_or_default();
                self.start_instance(state, f, tpl, &region).await?;
            }
            state.gateway.with(key, |st| {
                st.counters.instance_starts += u64::from(target - alive);
            });
            state.kick.notify_waiters();
        } else if alive > target {
            // Instances never placed (no node had room) first: nothing runs for them.
            let mut excess = (alive - target) as usize;
            for vm in instances.iter().filter(|vm| vm.status.node.is_none()) {
                if excess == 0 {
                    break;
                }
                tracing::info!(function = %f.spec.name, vm = %vm.id, "not wanted any more and never placed; removing");
                crate::app::vms::remove(state, vm).await?;
                excess -= 1;
            }
            // Then idle instances past their keep-alive, longest idle first.
            let keep_alive = f.spec.keep_alive_secs.map(|s| s * 1000);
            let mut expired: Vec<(u64, &Vm)> = instances
                .iter()
                .filter_map(|vm| {
                    let i = gw.get(&vm.id)?;
                    let idle = i.idle_since_ms.filter(|_| i.in_flight == 0 && i.ready)?;
                    let until = match keep_alive {
                        Some(k) => idle + k,
                        None => *deadlines.get(&vm.id)?,
                    };
                    (until <= now).then_some((idle, *vm))
                })
                .collect();
            expired.sort_by_key(|(idle, _)| *idle);
            for (_, vm) in expired.into_iter().take(excess) {
                if state.gateway.drain(key, &vm.id) {
                    tracing::info!(function = %f.spec.name, vm = %vm.id, "idle past its keep-alive; stopping");
                    crate::app::vms::remove(state, vm).await?;
                }
            }
        }
        // Instances of an older template go once idle.
        for vm in function_vms(vms, &f.spec) {
            let old = vm
                .spec
                .function
                .as_ref()
                .and_then(|b| b.template.as_ref())
                .is_some_and(|t| t.vm != tpl.vm);
            if old
                && !vm.deleting
                && gw.get(&vm.id).is_none_or(|i| i.in_flight == 0)
                && state.gateway.drain(key, &vm.id)
            {
                crate::app::vms::remove(state, vm).await?;
            }
        }
        Ok(())
    }

    async fn start_instance(
        &mut self,
        state: &AppState,
        f: &Function,
        tpl: &FunctionTemplate,
        region: &str,
    ) -> Result<(), ApiError> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let regions = if region.is_empty() {
            f.spec.regions.clone()
        } else {
            vec![region.to_owned()]
        };
        let template = TemplateRef {
            vm: tpl.vm.clone(),
            snapshot: tpl.snapshot.clone(),
        };
        let spec = function_vm_spec(
            f,
            vm_name(&f.spec.name, &suffix[..8]),
            regions,
            Some(template),
        );
        let vm = crate::app::vms::create(state, spec).await?;
        tracing::info!(function = %f.spec.name, vm = %vm.id, region, "starting an instance from the template");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_bins_compress_the_policies_windows() {
        let minute = engine_config(&FunctionsConfig::default());
        let second = engine_config(&FunctionsConfig {
            bin: Duration::from_secs(1),
            ..Default::default()
        });
        assert_eq!(
            second.firefleet.pool_window_ms * 60,
            minute.firefleet.pool_window_ms
        );
        assert_eq!(second.knative.stable_window_ms, 1000);
        assert_eq!(second.bin_ms, 1000);
        // The keep-alive for functions without history is the server's, as given.
        assert_eq!(second.default_keep_alive_ms, 600_000);
    }

    #[test]
    fn vm_names_fit() {
        let long = "a".repeat(63);
        let n = vm_name(&long, "tpl12");
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-tpl12"));
        assert_eq!(vm_name("echo", "ab12cd34"), "echo-ab12cd34");
    }
}
