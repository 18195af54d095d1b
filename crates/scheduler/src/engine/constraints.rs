//! Hard constraints: whether a node can take a request now (or the first constraint it fails),
//! whether a location bucket may hold one at all, and how the reasons of an unschedulable
//! request are reported.

use super::{Batch, MAX_LISTED_REASONS};
use crate::{
    PlacementRequest, ReasonKind, UnschedulableReason, LABEL_CLOUD, LABEL_DEDICATED, LABEL_REGION,
};

impl<'a> Batch<'a> {
    /// Whether node `slot` can take `request` now; else the first constraint it fails.
    pub(super) fn check(
        &self,
        slot: usize,
        request: &PlacementRequest,
    ) -> Result<(), UnschedulableReason> {
        let node = self.nodes[slot];
        let id = || node.id.clone();
        if !node.ready {
            return Err(UnschedulableReason::NotReady { node: id() });
        }
        if node.cordoned {
            return Err(UnschedulableReason::Cordoned { node: id() });
        }
        if let Some((key, _)) = request
            .node_selector
            .iter()
            .find(|(k, v)| node.labels.get(*k) != Some(*v))
        {
            return Err(UnschedulableReason::SelectorMismatch {
                node: id(),
                key: key.clone(),
            });
        }
        if let Some(runtime) = &request.runtime {
            if !node.runtimes.contains(runtime) {
                return Err(UnschedulableReason::RuntimeMissing {
                    node: id(),
                    runtime: runtime.clone(),
                });
            }
        }
        if let Some(owner) = node.labels.get(LABEL_DEDICATED) {
            if *owner != request.tenant {
                return Err(UnschedulableReason::DedicatedToOther {
                    node: id(),
                    tenant: owner.clone(),
                });
            }
        }
        for (key, allowed) in [
            (LABEL_CLOUD, &request.allowed_clouds),
            (LABEL_REGION, &request.allowed_regions),
        ] {
            let value = node.labels.get(key);
            if !allowed.is_empty() && !value.is_some_and(|v| allowed.contains(v)) {
                return Err(UnschedulableReason::Residency {
                    node: id(),
                    key: key.to_owned(),
                    value: value.cloned(),
                });
            }
        }
        if request.require_compliant && !node.compliant {
            return Err(UnschedulableReason::NotCompliant { node: id() });
        }
        let (free, want) = (self.free[slot], request.resources);
        if free.vcpus < want.vcpus {
            return Err(UnschedulableReason::InsufficientCpu {
                node: id(),
                free: free.vcpus,
                want: want.vcpus,
            });
        }
        if free.memory_mib < want.memory_mib {
            return Err(UnschedulableReason::InsufficientMemory {
                node: id(),
                free_mib: free.memory_mib,
                want_mib: want.memory_mib,
            });
        }
        if free.gpus < want.gpus {
            return Err(UnschedulableReason::InsufficientGpus {
                node: id(),
                free: free.gpus,
                want: want.gpus,
            });
        }
        if let Some(watts) = self.free_watts[slot] {
            if watts < request.watts {
                return Err(UnschedulableReason::InsufficientPower {
                    node: id(),
                    free_watts: watts,
                    want_watts: request.watts,
                });
            }
        }
        Ok(())
    }

    /// Whether bucket `b` may hold a node for `request` (residency and capacity bounds).
    pub(super) fn bucket_admits(&self, b: usize, request: &PlacementRequest) -> bool {
        let bucket = &self.buckets[b];
        let allowed = |list: &Vec<String>, v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|a| a == v))
        };
        allowed(&request.allowed_clouds, bucket.cloud)
            && allowed(&request.allowed_regions, bucket.region)
            && bucket.max_free.fits(&request.resources)
            && bucket.max_watts >= request.watts
    }
}

/// Keeps per-node reasons when there are few; otherwise counts them per kind.
pub(super) fn bound_reasons(reasons: Vec<UnschedulableReason>) -> Vec<UnschedulableReason> {
    if reasons.len() <= MAX_LISTED_REASONS {
        return reasons;
    }
    let mut counts = [0usize; ReasonKind::ALL.len()];
    for kind in reasons.iter().filter_map(UnschedulableReason::kind) {
        counts[kind as usize] += 1;
    }
    ReasonKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, nodes)| *nodes > 0)
        .map(|(kind, nodes)| UnschedulableReason::Summary { kind: *kind, nodes })
        .collect()
}
