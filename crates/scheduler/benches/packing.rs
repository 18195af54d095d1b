//! Packing: how many nodes the first 24 hours of the Azure VM trace 2017 need, under first-fit
//! and under the engine. A simulation that prints a markdown table (plain `main`, no criterion).
//!
//! Replays the VMs of `../shared/traces/azure-vm-2017-requests/vm_requests_dev_test.csv.gz`
//! whose 5-minute arrival bin ends in the first 24 h of the file (`PACKING_TRACE=path` reads
//! another file of the same columns, `.csv` or `.csv.gz`; `PACKING_MAX_VMS=n` caps the count).
//! Each VM arrives at its bin's end and occupies its node until arrival + lifetime (the middle
//! of its lifetime bin; censored VMs and those outliving the window stay to the end). At each bin
//! end, the VMs that ended by then leave first, then the bin's arrivals are placed in trace order.
//!
//! The fleet starts empty and only grows: identical nodes of `NODE_VCPUS` vCPUs and
//! `NODE_MEMORY_GIB` GiB (one cloud, one region, three zones, uniform price), opened when a VM
//! fits nowhere. First-fit places VM by VM, opening one node at a time. The engine places each
//! bin as one batch (as the scheduling controller would); for the VMs it could not place, it
//! opens as many nodes as they need at least (their total vCPUs or memory over a node's, rounded
//! up: every one of them is needed whatever the policy, since no open node can take any of
//! these VMs) and places them again, until all are placed. Tenant: the trace's batch (same
//! tenant, same bin), which is what the engine's co-location risk term sees.
//!
//! A second table replays the same window on a fleet pre-provisioned with 1.5 times the nodes
//! first-fit opened (its "nodes opened" is then the fleet size): how many nodes each policy
//! keeps in use when spare nodes exist. Only placing is timed; the machine may be shared.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use firefleet_scheduler::{
    place, Capacity, ClusterView, NodeView, Placement, PlacementRequest, TermWeights, Weights,
    LABEL_CLOUD, LABEL_REGION, LABEL_ZONE,
};
use firefleet_types::NodeId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const NODE_VCPUS: u32 = 32;
const NODE_MEMORY_GIB: u64 = 128;
const WINDOW_S: u64 = 24 * 3600;
const BIN_S: u64 = 300;

fn node_capacity() -> Capacity {
    Capacity {
        vcpus: NODE_VCPUS,
        memory_mib: NODE_MEMORY_GIB * 1024,
        gpus: 0,
    }
}

/// One VM of the trace.
struct Vm {
    /// Arrival (its bin's end), seconds from the window start.
    start: u64,
    /// When it leaves, seconds from the window start (`u64::MAX`: after the window).
    end: u64,
    size: Capacity,
    tenant: String,
}

fn trace_path() -> PathBuf {
    std::env::var_os("PACKING_TRACE").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/traces/azure-vm-2017-requests/vm_requests_dev_test.csv.gz")
        },
        PathBuf::from,
    )
}

/// The VMs arriving in the first 24 h of the trace, in arrival order, at most `max`.
fn load(max: usize) -> Vec<Vm> {
    let path = trace_path();
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open the trace {}: {e}", path.display()));
    let input: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    let mut t0 = None;
    for line in BufReader::new(input).lines().skip(1) {
        let line = line.unwrap();
        // split, arrival_bin_end_s, batch_in_bin, vcpus, mem_gb, censored, dur_bin,
        // dur_min_s, dur_max_s
        let c: Vec<&str> = line.split(',').collect();
        let arrival: u64 = c[1].parse().unwrap();
        let t0 = *t0.get_or_insert(arrival);
        let start = arrival - t0;
        if start >= WINDOW_S || out.len() >= max {
            break;
        }
        let vcpus: u32 = c[3].parse().unwrap();
        let mem_gb: f64 = c[4].parse().unwrap();
        let size = Capacity {
            vcpus,
            memory_mib: (mem_gb * 1024.0) as u64,
            gpus: 0,
        };
        assert!(
            node_capacity().fits(&size),
            "a VM of {vcpus} vCPUs / {mem_gb} GB does not fit a node"
        );
        let censored = c[5] == "1";
        let (lo, hi): (u64, u64) = (c[7].parse().unwrap(), c[8].parse().unwrap());
        let end = if censored {
            u64::MAX
        } else {
            start + (lo + hi) / 2
        };
        out.push(Vm {
            start,
            end,
            size,
            tenant: format!("t{arrival}-{}", c[2]),
        });
    }
    out
}

/// What a policy does: place `batch` (indices into the VMs) on the fleet, opening nodes.
trait Policy {
    fn place_batch(&mut self, fleet: &mut Fleet, vms: &[Vm], batch: &[usize]);
}

/// The fleet's state, shared by every policy.
struct Fleet {
    view: ClusterView,
    /// VMs on each node.
    vms: Vec<u32>,
    /// Node of each VM, once placed.
    node_of: Vec<Option<usize>>,
    index: HashMap<NodeId, usize>,
}

impl Fleet {
    fn new(vm_count: usize) -> Fleet {
        Fleet {
            view: ClusterView::default(),
            vms: Vec::new(),
            node_of: vec![None; vm_count],
            index: HashMap::new(),
        }
    }

    fn open(&mut self) -> usize {
        let i = self.view.nodes.len();
        let id: NodeId = format!("n{i:06}").parse().unwrap();
        let mut n = NodeView::new(id.clone(), node_capacity());
        n.labels.insert(LABEL_CLOUD.into(), "azure".into());
        n.labels.insert(LABEL_REGION.into(), "r0".into());
        n.labels.insert(LABEL_ZONE.into(), format!("z{}", i % 3));
        n.runtimes = vec!["qemu".into()];
        n.price_vcpu_hour = 0.04;
        n.price_gib_hour = 0.005;
        self.view.nodes.push(n);
        self.vms.push(0);
        self.index.insert(id, i);
        i
    }

    fn fits(&self, node: usize, vm: &Vm) -> bool {
        self.view.nodes[node].free().fits(&vm.size)
    }

    fn assign(&mut self, node: usize, v: usize, vm: &Vm) {
        let n = &mut self.view.nodes[node];
        n.allocated = n.allocated.saturating_add(&vm.size);
        *n.tenants.entry(vm.tenant.clone()).or_default() += 1;
        self.vms[node] += 1;
        self.node_of[v] = Some(node);
    }

    fn release(&mut self, v: usize, vm: &Vm) {
        let Some(node) = self.node_of[v].take() else {
            return;
        };
        let n = &mut self.view.nodes[node];
        n.allocated = n.allocated.saturating_sub(&vm.size);
        if let Some(c) = n.tenants.get_mut(&vm.tenant) {
            *c -= 1;
            if *c == 0 {
                n.tenants.remove(&vm.tenant);
            }
        }
        self.vms[node] -= 1;
    }

    fn in_use(&self) -> usize {
        self.vms.iter().filter(|&&c| c > 0).count()
    }
}

/// Scan nodes in id order, take the first that fits, else open one.
struct FirstFit;

impl Policy for FirstFit {
    fn place_batch(&mut self, fleet: &mut Fleet, vms: &[Vm], batch: &[usize]) {
        for &v in batch {
            let node = (0..fleet.view.nodes.len())
                .find(|&n| fleet.fits(n, &vms[v]))
                .unwrap_or_else(|| fleet.open());
            fleet.assign(node, v, &vms[v]);
        }
    }
}

/// The engine's `place`, one batch per bin.
struct Engine {
    weights: Weights,
    rng: ChaCha8Rng,
}

impl Policy for Engine {
    fn place_batch(&mut self, fleet: &mut Fleet, vms: &[Vm], batch: &[usize]) {
        let mut pending: Vec<usize> = batch.to_vec();
        while !pending.is_empty() {
            let requests: Vec<PlacementRequest> = pending
                .iter()
                .map(|&v| {
                    let mut r =
                        PlacementRequest::new(format!("vm{v}").parse().unwrap(), vms[v].size);
                    r.tenant.clone_from(&vms[v].tenant);
                    r.runtime = Some("qemu".into());
                    r
                })
                .collect();
            let out = place(&fleet.view, &requests, &self.weights, &mut self.rng);
            let mut left = Vec::new();
            for (&v, p) in pending.iter().zip(out) {
                match p {
                    Placement::Placed { node, .. } => {
                        let n = fleet.index[&node];
                        fleet.assign(n, v, &vms[v]);
                    }
                    Placement::Unschedulable { .. } => left.push(v),
                }
            }
            if !left.is_empty() {
                let (cpu, mem) = left.iter().fold((0u64, 0u64), |(c, m), &v| {
                    (c + u64::from(vms[v].size.vcpus), m + vms[v].size.memory_mib)
                });
                let cap = node_capacity();
                let need = cpu
                    .div_ceil(u64::from(cap.vcpus))
                    .max(mem.div_ceil(cap.memory_mib))
                    .max(1);
                for _ in 0..need {
                    fleet.open();
                }
            }
            pending = left;
        }
    }
}

struct Outcome {
    opened: usize,
    peak_in_use: usize,
    mean_in_use: f64,
    /// Most nodes the live VMs needed at any bin, counting resources only (no fragmentation).
    lower_bound: u64,
    cpu_util: f64,
    mem_util: f64,
    placed: usize,
    secs: f64,
}

/// Replays the window under `policy` on a fleet that starts with `preopened` empty nodes.
fn simulate(policy: &mut dyn Policy, vms: &[Vm], preopened: usize) -> Outcome {
    let mut fleet = Fleet::new(vms.len());
    for _ in 0..preopened {
        fleet.open();
    }
    let (mut in_use_sum, mut lower_bound) = (0usize, 0u64);
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut peak, mut samples, mut cpu_sum, mut mem_sum) = (0, 0u32, 0.0, 0.0);
    let mut secs = 0.0;
    let mut placed = 0;
    let mut next = 0;
    let mut t = 0;
    while t < WINDOW_S {
        // Leaves first (the window's clock is not the placement's: only placing is timed).
        while let Some(&Reverse((end, v))) = ends.peek() {
            if end > t {
                break;
            }
            ends.pop();
            fleet.release(v, &vms[v]);
        }
        let from = next;
        while next < vms.len() && vms[next].start <= t {
            next += 1;
        }
        let batch: Vec<usize> = (from..next).collect();
        let clock = Instant::now();
        policy.place_batch(&mut fleet, vms, &batch);
        secs += clock.elapsed().as_secs_f64();
        placed += batch
            .iter()
            .filter(|&&v| fleet.node_of[v].is_some())
            .count();
        for v in batch {
            ends.push(Reverse((vms[v].end, v)));
        }
        let in_use = fleet.in_use();
        peak = peak.max(in_use);
        let cap = node_capacity();
        let (cpu, mem) = fleet.view.nodes.iter().fold((0u64, 0u64), |(c, m), n| {
            (c + u64::from(n.allocated.vcpus), m + n.allocated.memory_mib)
        });
        lower_bound = lower_bound.max(
            cpu.div_ceil(u64::from(cap.vcpus))
                .max(mem.div_ceil(cap.memory_mib)),
        );
        // Hourly sample, after the bin ending on the hour is placed.
        if t > 0 && t % 3600 == 0 && in_use > 0 {
            in_use_sum += in_use;
            cpu_sum += cpu as f64 / (in_use as f64 * f64::from(cap.vcpus));
            mem_sum += mem as f64 / (in_use as f64 * cap.memory_mib as f64);
            samples += 1;
        }
        t += BIN_S;
    }
    Outcome {
        opened: fleet.view.nodes.len(),
        peak_in_use: peak,
        mean_in_use: in_use_sum as f64 / f64::from(samples.max(1)),
        lower_bound,
        cpu_util: cpu_sum / f64::from(samples.max(1)),
        mem_util: mem_sum / f64::from(samples.max(1)),
        placed,
        secs,
    }
}

fn engine(weights: Weights) -> Engine {
    Engine {
        weights,
        rng: ChaCha8Rng::seed_from_u64(1),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let max: usize = std::env::var("PACKING_MAX_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let vms = load(max);
    let cpu: u64 = vms.iter().map(|v| u64::from(v.size.vcpus)).sum();
    eprintln!(
        "{} VMs in the first 24 h of {} ({cpu} vCPUs requested in all); nodes of {NODE_VCPUS} vCPUs / {NODE_MEMORY_GIB} GiB",
        vms.len(),
        trace_path().display()
    );
    let mut first_fit_opened = 0;
    for (scenario, factor) in [("grows on demand", 0.0), ("pre-provisioned", 1.5)] {
        let preopened = (first_fit_opened as f64 * factor).round() as usize;
        println!();
        if preopened == 0 {
            println!("Fleet starts empty and grows only when a VM fits nowhere ({scenario}):");
        } else {
            println!(
                "Fleet {scenario} with {preopened} nodes (1.5 x first-fit's), none opened unless full:"
            );
        }
        println!();
        println!("| policy | nodes opened | peak nodes in use | mean nodes in use (hourly) | mean vCPU util (in use, hourly) | mean memory util (in use, hourly) | VMs placed | wall time (s) | placements/s |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut lower_bound = 0;
        for (name, mut policy) in policies() {
            let o = simulate(policy.as_mut(), &vms, preopened);
            if preopened == 0 && first_fit_opened == 0 {
                first_fit_opened = o.opened;
            }
            lower_bound = o.lower_bound;
            println!(
                "| {name} | {} | {} | {:.1} | {:.1}% | {:.1}% | {} | {:.2} | {:.0} |",
                o.opened,
                o.peak_in_use,
                o.mean_in_use,
                100.0 * o.cpu_util,
                100.0 * o.mem_util,
                o.placed,
                o.secs,
                o.placed as f64 / o.secs.max(1e-9)
            );
        }
        println!();
        println!("Lower bound (live VMs' vCPUs or memory over a node's, peak over bins): {lower_bound} nodes.");
    }
}

fn policies() -> Vec<(&'static str, Box<dyn Policy>)> {
    let packing = Weights {
        default: TermWeights {
            availability: 0.2,
            cost: 3.0,
            ..TermWeights::default()
        },
        ..Weights::default()
    };
    let pack = Weights {
        default: TermWeights {
            pack: 3.0,
            risk: 0.0,
            ..TermWeights::default()
        },
        ..Weights::default()
    };
    let no_colocation = Weights {
        default: TermWeights {
            risk: 0.0,
            ..TermWeights::default()
        },
        ..Weights::default()
    };
    vec![
        ("first-fit (node-id order)", Box::new(FirstFit)),
        (
            "engine, default weights (sampled)",
            Box::new(engine(Weights::default())),
        ),
        (
            "engine, cost 3 / availability 0.2 (sampled)",
            Box::new(engine(packing)),
        ),
        ("engine, risk 0 (sampled)", Box::new(engine(no_colocation))),
        ("engine, pack 3 / risk 0 (sampled)", Box::new(engine(pack))),
    ]
}
