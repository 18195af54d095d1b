//! `firefleet bench admission`: how long admission takes with the policies in force.
//!
//! Two measurements, in one run: the policy engine alone (`PolicySet::admit` with the built-in
//! bundle, in this process, on an admitted and on a refused spec), and the API's round trip for
//! a create that admission refuses (`POST /v1/vms` -> 403: authentication, the stored policy
//! set and tenant, the evaluation and the audit record of the refusal; nothing is created).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use firefleet_api::CreateVmRequest;
use firefleet_types::Resources;
use serde::Serialize;

use crate::args::Global;

#[derive(Debug, Serialize)]
struct Row {
    what: String,
    samples: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn row(what: &str, mut d: Vec<Duration>) -> Row {
    d.sort_unstable();
    let at = |q: f64| {
        d.get(((d.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0, |x| x.as_micros() as u64)
    };
    Row {
        what: what.to_owned(),
        samples: d.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

fn spec(vcpus: u32) -> serde_json::Value {
    serde_json::json!({
        "vm": {
            "name": "bench", "tenant": "acme",
            "image": format!("sha256:{}", "ab".repeat(32)),
            "resources": {"vcpus": vcpus, "memory_mib": 256},
            "labels": {}, "cmd": null, "restart_policy": "never", "desired": "running",
            "restore": null, "network": {"enabled": true, "egress_mbit": null, "ingress_mbit": null},
            "runtime": "qemu", "disks": [],
            "placement": {"node_selector": {}, "allowed_clouds": [], "allowed_regions": [],
                          "group": null, "class": null, "user_region": null}
        },
        "tenant": {"id": "acme", "class": "standard", "regions": []}
    })
}

pub async fn admission(g: &Global, count: usize, api: bool) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let bar = crate::output::progress(g.output, (count * if api { 3 } else { 2 }) as u64);
    let set = firefleet_policy::PolicySet::compile(&firefleet_policy::builtin())
        .context("compiling the built-in bundle")?;
    let mut rows = Vec::new();
    for (what, input, want_denied) in [
        ("engine: admitted spec (built-in bundle)", spec(1), false),
        ("engine: refused spec (built-in bundle)", spec(12), true),
    ] {
        let mut d = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            let eval = set.admit(&input);
            d.push(t.elapsed());
            if eval.denied() != want_denied {
                bail!("{what}: the bundle decided denied={} ", eval.denied());
            }
            bar.inc(1);
        }
        rows.push(row(what, d));
    }
    if api {
        let c = crate::cmd_vm::client(g)?;
        let req = request(format!("bench-admission-{}", std::process::id()), 12, 256);
        let mut d = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            match c.vm_create(&req).await {
                Err(firefleet_client::ClientError::Api { code, .. }) if code == "policy_denied" => {
                    d.push(t.elapsed());
                }
                Err(e) => bail!("the refused create failed otherwise: {e}"),
                Ok(vm) => bail!("the server admitted {} (12 vCPUs)", vm.id),
            }
            bar.inc(1);
        }
        rows.push(row("API: POST /v1/vms refused by policy (round trip)", d));
    }
    bar.finish_and_clear();
    print_rows(g, &rows)
}

/// `firefleet bench creates`: `POST /v1/vms` accepted (the VM is stored; with no node it
/// stays pending) and `DELETE /v1/vms/{id}`, each timed at the client.
pub async fn creates(g: &Global, count: usize) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let c = crate::cmd_vm::client(g)?;
    let bar = crate::output::progress(g.output, count as u64);
    let (mut created, mut deleted) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let req = request(format!("bench-create-{}-{i}", std::process::id()), 1, 128);
        let t = Instant::now();
        let vm = c
            .vm_create(&req)
            .await
            .with_context(|| format!("creating {}", req.name))?;
        created.push(t.elapsed());
        let t = Instant::now();
        c.vm_delete(&vm.id.to_string())
            .await
            .with_context(|| format!("deleting {}", req.name))?;
        deleted.push(t.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    print_rows(
        g,
        &[
            row("API: POST /v1/vms accepted (round trip)", created),
            row("API: DELETE /v1/vms/{id} (round trip)", deleted),
        ],
    )
}

/// A create of a VM of a made-up image (never booted: no node runs it in these benchmarks).
fn request(name: String, vcpus: u32, memory_mib: u64) -> CreateVmRequest {
    CreateVmRequest {
        name,
        image: format!("sha256:{}", "ab".repeat(32)),
        resources: Resources { vcpus, memory_mib },
        labels: Default::default(),
        cmd: None,
        restart_policy: Default::default(),
        tenant: None,
        network: Default::default(),
        runtime: Default::default(),
        disks: Vec::new(),
        placement: Default::default(),
    }
}

fn print_rows(g: &Global, rows: &[Row]) -> anyhow::Result<()> {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.what.clone(),
                r.samples.to_string(),
                r.p50_us.to_string(),
                r.p99_us.to_string(),
                r.max_us.to_string(),
            ]
        })
        .collect();
    crate::output::print(
        g.output,
        &rows,
        &["WHAT", "SAMPLES", "P50_US", "P99_US", "MAX_US"],
        table,
    )
}
