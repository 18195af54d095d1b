//! The functions gateway: where invocations meet instances.
//!
//! The gateway keeps, in memory, each function's instances as the functions controller last
//! saw them (ready or starting, node, region) with what only the gateway knows: invocations in
//! flight per instance and since when an instance has been idle. An invocation goes to a ready
//! instance with room (fewer than `concurrency` in flight): one in the caller's region first,
//! then the least loaded. When none has room it waits — counted as demand, which wakes the
//! controller to start instances from the function's template — until one has, or until the
//! hold deadline passes (a clear error then). Counters and a latency histogram per function
//! feed `/metrics` and, per tick, the autoscaler.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use base64::Engine as _;
use firefleet_api::{AgentInvocation, AgentInvocationResult, FunctionCounters};
use firefleet_types::{FunctionSpec, NodeId, TenantId, VmId};
use tokio::sync::{watch, Notify};

use super::relay;
use crate::now_ms;

/// A function's identity in the gateway.
pub(crate) type FnKey = (TenantId, String);

/// Upper bounds (seconds) of the latency histogram's buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One instance as the gateway sees it.
#[derive(Debug, Clone)]
pub(crate) struct Inst {
    pub node: NodeId,
    pub region: String,
    pub in_flight: u32,
    /// Since when nothing has been in flight (None while busy or not ready).
    pub idle_since_ms: Option<u64>,
    pub ready: bool,
    /// When it became ready (an invocation that arrived before this waited for a cold start).
    pub ready_ms: u64,
    /// Being stopped: takes no new invocations.
    pub draining: bool,
}

/// What happened to a function during the current tick (taken by the controller).
#[derive(Debug, Clone, Default)]
pub(crate) struct TickStats {
    /// Invocations that arrived, by the region they asked for (`""`: none).
    pub arrivals: BTreeMap<String, u64>,
    /// Most invocations in flight or waiting at once.
    pub peak_demand: u32,
    /// Cold starts.
    pub cold_starts: u64,
    /// Time invocations spent in flight, summed (ms).
    pub in_flight_ms: u64,
}

#[derive(Default)]
pub(crate) struct FnState {
    pub instances: BTreeMap<VmId, Inst>,
    /// Invocations waiting for an instance, by the region they asked for.
    pub waiting: BTreeMap<String, u32>,
    pub counters: FunctionCounters,
    /// Counts per bucket of [`LATENCY_BUCKETS`] (+ one for larger), and the sum in seconds.
    pub latency: ([u64; LATENCY_BUCKETS.len() + 1], f64),
    pub tick: TickStats,
    /// The autoscaler's latest decision.
    pub wanted: BTreeMap<String, u32>,
    pub reason: Option<String>,
    pub deadlines: BTreeMap<VmId, u64>,
    changed: Option<watch::Sender<u64>>,
}

impl FnState {
    fn in_flight(&self) -> u32 {
        self.instances.values().map(|i| i.in_flight).sum()
    }

    /// Invocations in flight or waiting.
    pub fn demand(&self) -> u32 {
        self.in_flight() + self.waiting.values().sum::<u32>()
    }

    fn changed(&mut self) -> &watch::Sender<u64> {
        self.changed.get_or_insert_with(|| watch::channel(0).0)
    }

    fn wake(&mut self) {
        self.changed().send_modify(|v| *v += 1);
    }

    fn note_demand(&mut self) {
        let d = self.demand();
        self.tick.peak_demand = self.tick.peak_demand.max(d);
    }
}

/// The most invocations of one function that may wait for an instance at once; past it, new
/// ones are refused at once (503) instead of held.
pub(crate) const MAX_WAITING: u32 = 1024;

/// The most distinct regions counted per function and tick; invocations naming further
/// regions are counted as naming none (the region comes from the caller).
const MAX_REGIONS: usize = 64;

/// Why an invocation was not answered by the function.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvokeError {
    /// Too many invocations are already waiting for an instance.
    #[error(
        "{waiting} invocations of function {function} are already waiting for an instance; \
         try again later"
    )]
    Busy { function: String, waiting: u32 },
    /// No instance had room before the hold deadline.
    #[error(
        "no instance of function {function} was free within {waited_ms} ms \
         ({ready} ready and busy, {starting} starting, at most {max}); try again later"
    )]
    NoInstance {
        function: String,
        waited_ms: u64,
        ready: usize,
        starting: usize,
        max: u32,
    },
    /// The instance's node did not answer.
    #[error("instance {vm} on node {node}: {source}")]
    Relay {
        vm: VmId,
        node: NodeId,
        #[source]
        source: relay::RelayError,
    },
}

/// What an invocation produced.
#[derive(Debug)]
pub(crate) struct Invoked {
    pub result: AgentInvocationResult,
    pub vm: VmId,
    pub node: NodeId,
    pub cold_start: bool,
    pub latency_ms: u64,
}

/// Shared by the HTTP handlers and the functions controller.
#[derive(Default)]
pub(crate) struct Gateway {
    fns: Mutex<HashMap<FnKey, FnState>>,
    pub relay: relay::Relay,
    /// Fires when an invocation starts waiting (the controller starts instances at once).
    pub demand: Notify,
}

/// Gives back an instance slot (or a waiting count) even when the invocation's future is
/// dropped half way (the client went away).
struct Slot<'a> {
    gw: &'a Gateway,
    key: &'a FnKey,
    vm: Option<VmId>,
    waiting: Option<String>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut fns = self.gw.lock();
        let Some(st) = fns.get_mut(self.key) else {
            return;
        };
        if let Some(region) = self.waiting.take() {
            if let Some(n) = st.waiting.get_mut(&region) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.waiting.remove(&region);
                }
            }
        }
        if let Some(vm) = self.vm.take() {
            if let Some(inst) = st.instances.get_mut(&vm) {
                inst.in_flight = inst.in_flight.saturating_sub(1);
                if inst.in_flight == 0 {
                    inst.idle_since_ms = Some(now_ms());
                }
            }
            st.counters.in_flight = st.counters.in_flight.saturating_sub(1);
            st.wake();
        }
        st.counters.waiting = st.waiting.values().map(|&n| u64::from(n)).sum();
    }
}

impl Gateway {
    fn lock(&self) -> MutexGuard<'_, HashMap<FnKey, FnState>> {
        self.fns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a function's state (made empty if the gateway has none yet).
    pub fn with<T>(&self, key: &FnKey, f: impl FnOnce(&mut FnState) -> T) -> T {
        f(self.lock().entry(key.clone()).or_default())
    }

    /// Runs `f` on every function's state.
    pub fn each(&self, mut f: impl FnMut(&FnKey, &FnState)) {
        for (k, st) in self.lock().iter() {
            f(k, st);
        }
    }

    /// Forgets a function that no longer exists.
    pub fn forget(&self, key: &FnKey) {
        self.lock().remove(key);
    }

    /// The functions the gateway has state for.
    pub fn keys(&self) -> Vec<FnKey> {
        self.lock().keys().cloned().collect()
    }

    /// Replaces the instance list with what the controller sees: `(vm, node, region, ready)`.
    /// New ready instances wake waiting invocations.
    pub fn sync(&self, key: &FnKey, seen: Vec<(VmId, NodeId, String, bool)>) {
        let now = now_ms();
        let mut fns = self.lock();
        let st = fns.entry(key.clone()).or_default();
        let mut woke = false;
        let mut next = BTreeMap::new();
        for (vm, node, region, ready) in seen {
            let inst = match st.instances.remove(&vm) {
                Some(mut i) => {
                    if ready && !i.ready {
                        i.ready_ms = now;
                        i.idle_since_ms = Some(now);
                        woke = true;
                    }
                    i.ready = ready;
                    i.node = node;
                    i.region = region;
                    i
                }
                None => {
                    woke |= ready;
                    Inst {
                        node,
                        region,
                        in_flight: 0,
                        idle_since_ms: ready.then_some(now),
                        ready,
                        ready_ms: now,
                        draining: false,
                    }
                }
            };
            next.insert(vm, inst);
        }
        st.instances = next;
        if woke {
            st.wake();
        }
    }

    /// Marks an idle instance as being stopped, so nothing new goes to it; false (and nothing
    /// changes) if something is in flight on it.
    pub fn drain(&self, key: &FnKey, vm: &VmId) -> bool {
        let mut fns = self.lock();
        let Some(inst) = fns.get_mut(key).and_then(|st| st.instances.get_mut(vm)) else {
            return true;
        };
        if inst.in_flight > 0 {
            return false;
        }
        inst.draining = true;
        true
    }

    /// Takes the current tick's statistics.
    pub fn take_tick(&self, key: &FnKey) -> TickStats {
        self.with(key, |st| std::mem::take(&mut st.tick))
    }

    /// Invokes the function: the body goes to an instance with room, waiting at most `hold`
    /// for one.
    pub async fn invoke(
        &self,
        key: &FnKey,
        spec: &FunctionSpec,
        body: &[u8],
        region: Option<&str>,
        hold: Duration,
    ) -> Result<Invoked, InvokeError> {
        let start = Instant::now();
        let arrived_ms = now_ms();
        let mut region = region.unwrap_or("").to_owned();
        let mut slot = Slot {
            gw: self,
            key,
            vm: None,
            waiting: None,
        };
        let mut counted = false;
        let (vm, node, cold_start) = loop {
            let mut rx = {
                let mut fns = self.lock();
                let st = fns.entry(key.clone()).or_default();
                if !counted {
                    if st.tick.arrivals.len() >= MAX_REGIONS
                        && !st.tick.arrivals.contains_key(&region)
                    {
                        region.clear();
                    }
                    *st.tick.arrivals.entry(region.clone()).or_default() += 1;
                    counted = true;
                }
                if let Some(vm) = pick(st, &region, spec.concurrency) {
                    let inst = st.instances.get_mut(&vm).expect("picked from the map");
                    inst.in_flight += 1;
                    inst.idle_since_ms = None;
                    let picked = (vm.clone(), inst.node.clone(), inst.ready_ms > arrived_ms);
                    st.counters.in_flight += 1;
                    slot.vm = Some(vm);
                    if let Some(r) = slot.waiting.take() {
                        if let Some(n) = st.waiting.get_mut(&r) {
                            *n = n.saturating_sub(1);
                        }
                        st.waiting.retain(|_, n| *n > 0);
                    }
                    st.counters.waiting = st.waiting.values().map(|&n| u64::from(n)).sum();
                    st.note_demand();
                    break picked;
                }
                if slot.waiting.is_none() {
                    let waiting: u32 = st.waiting.values().sum();
                    if waiting >= MAX_WAITING {
                        st.counters.errors += 1;
                        return Err(InvokeError::Busy {
                            function: spec.name.clone(),
                            waiting,
                        });
                    }
                    *st.waiting.entry(region.clone()).or_default() += 1;
                    slot.waiting = Some(region.clone());
                    st.counters.waiting = st.waiting.values().map(|&n| u64::from(n)).sum();
                    st.note_demand();
                }
                st.changed().subscribe()
            };
            self.demand.notify_one();
            let left = hold.saturating_sub(start.elapsed());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                let (ready, starting) = self.with(key, |st| {
                    let ready = st.instances.values().filter(|i| i.ready).count();
                    (ready, st.instances.len() - ready)
                });
                self.with(key, |st| st.counters.errors += 1);
                return Err(InvokeError::NoInstance {
                    function: spec.name.clone(),
                    waited_ms: start.elapsed().as_millis() as u64,
                    ready,
                    starting,
                    max: spec.max,
                });
            }
        };
        let inv = AgentInvocation {
            id: uuid::Uuid::new_v4().to_string(),
            vm: vm.clone(),
            handler: spec.handler(),
            body_b64: base64::engine::general_purpose::STANDARD.encode(body),
            timeout_ms: spec.timeout_ms,
        };
        // The handler's own limit, plus time for the guest and the agent to answer.
        let wait = Duration::from_millis(spec.timeout_ms) + Duration::from_secs(10);
        let outcome = self.relay.call(&node, inv, wait).await;
        let latency = start.elapsed();
        self.with(key, |st| {
            st.counters.invocations += 1;
            st.tick.in_flight_ms += latency.as_millis() as u64;
            if cold_start {
                st.counters.cold_starts += 1;
                st.tick.cold_starts += 1;
            }
            let ok = matches!(&outcome, Ok(r) if r.status < 300);
            if !ok {
                st.counters.errors += 1;
            }
            let secs = latency.as_secs_f64();
            let b = LATENCY_BUCKETS
                .iter()
                .position(|&le| secs <= le)
                .unwrap_or(LATENCY_BUCKETS.len());
            st.latency.0[b] += 1;
            st.latency.1 += secs;
        });
        drop(slot);
        match outcome {
            Ok(result) => Ok(Invoked {
                result,
                vm,
                node,
                cold_start,
                latency_ms: latency.as_millis() as u64,
            }),
            Err(source) => Err(InvokeError::Relay { vm, node, source }),
        }
    }
}

/// Per-function series for `/metrics`: invocations, cold starts, errors, instance starts
/// (counters), in flight, waiting and instances (gauges), and the latency histogram.
pub(crate) fn render_metrics(gw: &Gateway, out: &mut String) {
    use std::fmt::Write;
    let esc = crate::metrics::escape;
    let mut rows = Vec::new();
    gw.each(|(tenant, name), st| {
        rows.push((
            format!(
                "tenant=\"{}\",function=\"{}\"",
                esc(tenant.as_str()),
                esc(name)
            ),
            st.counters.clone(),
            st.instances.len(),
            st.latency,
        ));
    });
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    type Pick = fn(&FunctionCounters) -> u64;
    let series: [(&str, &str, &str, Pick); 6] = [
        (
            "firefleet_function_invocations_total",
            "counter",
            "Invocations answered (any outcome).",
            |c| c.invocations,
        ),
        (
            "firefleet_function_cold_starts_total",
            "counter",
            "Invocations that waited for an instance to start.",
            |c| c.cold_starts,
        ),
        (
            "firefleet_function_errors_total",
            "counter",
            "Invocations that failed.",
            |c| c.errors,
        ),
        (
            "firefleet_function_instance_starts_total",
            "counter",
            "Instances started from the template.",
            |c| c.instance_starts,
        ),
        (
            "firefleet_function_in_flight",
            "gauge",
            "Invocations in flight.",
            |c| c.in_flight,
        ),
        (
            "firefleet_function_waiting",
            "gauge",
            "Invocations waiting for an instance.",
            |c| c.waiting,
        ),
    ];
    for (metric, kind, help, pick) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (labels, c, _, _) in &rows {
            let _ = writeln!(out, "{metric}{{{labels}}} {}", pick(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP firefleet_function_instances Instances known to the gateway.\n# TYPE firefleet_function_instances gauge"
    );
    for (labels, _, n, _) in &rows {
        let _ = writeln!(out, "firefleet_function_instances{{{labels}}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP firefleet_function_latency_seconds Invocation latency through the gateway.\n# TYPE firefleet_function_latency_seconds histogram"
    );
    for (labels, _, _, (buckets, sum)) in &rows {
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += buckets[i];
            let _ = writeln!(
                out,
                "firefleet_function_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += buckets[LATENCY_BUCKETS.len()];
        let _ = writeln!(
            out,
            "firefleet_function_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "firefleet_function_latency_seconds_sum{{{labels}}} {sum}"
        );
        let _ = writeln!(
            out,
            "firefleet_function_latency_seconds_count{{{labels}}} {cumulative}"
        );
    }
}

/// A ready instance with room: in the wanted region if any there has room, the least loaded
/// (then the longest idle, so recently used instances stay warm and idle ones can expire).
fn pick(st: &FnState, region: &str, concurrency: u32) -> Option<VmId> {
    st.instances
        .iter()
        .filter(|(_, i)| i.ready && !i.draining && i.in_flight < concurrency)
        .min_by_key(|(_, i)| {
            (
                !region.is_empty() && i.region != region,
                i.in_flight,
                // Most recently used first among the idle: the others can expire.
                std::cmp::Reverse(i.idle_since_ms.unwrap_or(u64::MAX)),
            )
        })
        .map(|(vm, _)| vm.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(region: &str, in_flight: u32, idle: Option<u64>) -> Inst {
        Inst {
            node: "n1".parse().unwrap(),
            region: region.into(),
            in_flight,
            idle_since_ms: idle,
            ready: true,
            ready_ms: 0,
            draining: false,
        }
    }

    #[test]
    fn picks_the_region_first_then_the_least_loaded_with_room() {
        let mut st = FnState::default();
        st.instances
            .insert("a".parse().unwrap(), inst("eu", 1, None));
        st.instances
            .insert("b".parse().unwrap(), inst("us", 0, Some(10)));
        st.instances
            .insert("c".parse().unwrap(), inst("us", 2, None));
        assert_eq!(pick(&st, "eu", 2).unwrap().as_str(), "a");
        assert_eq!(pick(&st, "us", 2).unwrap().as_str(), "b");
        assert_eq!(pick(&st, "", 2).unwrap().as_str(), "b");
        // Full or draining instances take nothing.
        assert_eq!(pick(&st, "eu", 1).unwrap().as_str(), "b");
        st.instances
            .get_mut(&"b".parse().unwrap())
            .unwrap()
            .draining = true;
        assert!(pick(&st, "us", 1).is_none());
    }

    #[test]
    fn prefers_the_most_recently_used_idle_instance() {
        let mut st = FnState::default();
        st.instances
            .insert("old".parse().unwrap(), inst("", 0, Some(10)));
        st.instances
            .insert("new".parse().unwrap(), inst("", 0, Some(20)));
        assert_eq!(pick(&st, "", 1).unwrap().as_str(), "new");
    }

    #[tokio::test]
    async fn waits_for_an_instance_and_fails_clearly_at_the_deadline() {
        let gw = Gateway::default();
        let key: FnKey = ("acme".parse().unwrap(), "echo".into());
        let spec = FunctionSpec {
            timeout_ms: 1000,
            ..firefleet_types::fixtures::function_spec("echo")
        };
        let err = gw
            .invoke(&key, &spec, b"x", None, Duration::from_millis(50))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no instance of function echo"), "{msg}");
        gw.with(&key, |st| {
            assert!(st.waiting.is_empty(), "the waiter was counted out");
            assert_eq!(st.tick.peak_demand, 1);
            assert_eq!(st.counters.errors, 1);
        });
    }
}
