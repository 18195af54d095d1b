//! `/healthz`, `/metrics`, `/openapi.json`.

use std::collections::BTreeMap;

use axum::{extract::State, http::header, response::IntoResponse, Json};
use firefleet_api::{ErrorBody, Health, Role};
use firefleet_types::node::NodeReadiness;

use crate::{app, ApiError, AppState};

/// Liveness and store revision.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let revision = state.store.revision().await?;
    Ok(Json(Health {
        status: "ok".to_owned(),
        revision,
    }))
}

/// The control plane's replicas and its leader (admin).
#[utoipa::path(get, path = "/v1/cluster", security(("bearer" = [])),
    responses((status = 200, body = firefleet_api::ClusterStatus), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn cluster(
    State(state): State<AppState>,
    _admin: crate::auth::Admin,
) -> Result<Json<firefleet_api::ClusterStatus>, ApiError> {
    Ok(Json(app::cluster::status(&state).await?))
}

/// Prometheus metrics (text format). They name tenants, functions and VMs, so they need an
/// admin token or a metrics token (`firefleet token create --role metrics`).
#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, content_type = "text/plain", body = String),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    axum::Extension(authn): axum::Extension<crate::auth::Authn>,
) -> Result<impl IntoResponse, ApiError> {
    use std::fmt::Write;
    if !matches!(authn.caller()?.role, Role::Admin | Role::Metrics) {
        return Err(ApiError::Forbidden(
            "/metrics needs an admin or a metrics token".to_owned(),
        ));
    }
    let mut out = String::new();
    state.metrics.render(&mut out);
    state.guard.render(&mut out);
    state.cluster.render(&mut out);
    let (vms, revision) = app::vms::all(&state).await?;
    let mut by_phase: BTreeMap<String, u64> = BTreeMap::new();
    for vm in &vms {
        let phase = serde_json::to_value(vm.status.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        *by_phase.entry(phase.unwrap_or_default()).or_default() += 1;
    }
    out.push_str("# HELP firefleet_vms VMs by phase.\n# TYPE firefleet_vms gauge\n");
    for (phase, n) in by_phase {
        let _ = writeln!(out, "firefleet_vms{{phase=\"{phase}\"}} {n}");
    }
    let nodes = app::nodes::list(&state).await?;
    let ready = nodes
        .iter()
        .filter(|n| n.status.readiness == NodeReadiness::Ready)
        .count();
    out.push_str("# HELP firefleet_nodes Nodes by readiness.\n# TYPE firefleet_nodes gauge\n");
    let _ = writeln!(out, "firefleet_nodes{{readiness=\"ready\"}} {ready}");
    let _ = writeln!(
        out,
        "firefleet_nodes{{readiness=\"not_ready\"}} {}",
        nodes.len() - ready
    );
    let stats: Vec<(String, firefleet_api::VmStats)> = state
        .stats
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
        .unwrap_or_default();
    let live: std::collections::HashSet<String> = vms.iter().map(|v| v.id.to_string()).collect();
    let stats: Vec<_> = stats
        .into_iter()
        .filter(|(id, _)| live.contains(id))
        .collect();
    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 kind: &str,
                 f: &dyn Fn(&firefleet_api::VmStats) -> Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, s) in &stats {
            if let Some(v) = f(s) {
                let _ = writeln!(out, "{name}{{vm=\"{id}\"}} {v}");
            }
        }
    };
    gauge(
        &mut out,
        "firefleet_vm_cpu_seconds_total",
        "CPU time of the VM's VMM process.",
        "counter",
        &|s| Some(s.host.cpu_time_ms as f64 / 1000.0),
    );
    gauge(
        &mut out,
        "firefleet_vm_rss_bytes",
        "Resident memory of the VM's VMM process.",
        "gauge",
        &|s| Some(s.host.rss_bytes as f64),
    );
    gauge(
        &mut out,
        "firefleet_vm_net_rx_bytes_total",
        "Bytes the VM sent (received on its TAP).",
        "counter",
        &|s| s.host.net.as_ref().map(|n| n.rx_bytes as f64),
    );
    gauge(
        &mut out,
        "firefleet_vm_net_tx_bytes_total",
        "Bytes sent to the VM (on its TAP).",
        "counter",
        &|s| s.host.net.as_ref().map(|n| n.tx_bytes as f64),
    );
    for (name, help, pick) in [
        (
            "firefleet_vm_disk_read_bytes_total",
            "Bytes the VM's guest read from a disk.",
            (|d: &firefleet_api::DiskStats| d.read_bytes) as fn(&firefleet_api::DiskStats) -> u64,
        ),
        (
            "firefleet_vm_disk_write_bytes_total",
            "Bytes the VM's guest wrote to a disk.",
            |d: &firefleet_api::DiskStats| d.write_bytes,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (id, s) in &stats {
            for d in &s.host.disks {
                let _ = writeln!(
                    out,
                    "{name}{{vm=\"{id}\",device=\"{}\"}} {}",
                    crate::metrics::escape(&d.device),
                    pick(d)
                );
            }
        }
    }
    gauge(
        &mut out,
        "firefleet_vm_guest_processes",
        "Processes in the guest.",
        "gauge",
        &|s| s.guest.as_ref().map(|g| g.processes as f64),
    );
    gauge(
        &mut out,
        "firefleet_vm_guest_mem_available_bytes",
        "Memory available in the guest.",
        "gauge",
        &|s| {
            s.guest
                .as_ref()
                .map(|g| g.mem_available_kib as f64 * 1024.0)
        },
    );
    out.push_str("# HELP firefleet_store_revision Current store revision.\n# TYPE firefleet_store_revision gauge\n");
    let _ = writeln!(out, "firefleet_store_revision {revision}");
    crate::app::functions::render_metrics(&state.gateway, &mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// The OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}
