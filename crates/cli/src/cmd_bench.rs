//! `firefleet bench fn`: a function's cold starts against its warm calls, through the gateway.
//!
//! `firefleet bench vm-run`: time from `vm run` to Running against a live cluster, split into
//! control-plane time (accepted -> VMM launched: API, store, scheduler, agent watch) and VMM boot
//! time (launched -> guest ready line seen), from the timestamps the server records.

use std::time::{Duration, Instant};

use anyhow::bail;
use firefleet_api::CreateVmRequest;
use firefleet_types::{Resources, VmPhase};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::{
    args::{Global, Output},
    cmd_vm::{client, wait_for},
};

#[derive(Debug, Serialize)]
struct Sample {
    control_plane_ms: u64,
    vmm_boot_ms: u64,
    total_ms: u64,
    client_wall_ms: u64,
    accel: String,
    node: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    runs: usize,
    median_control_plane_ms: u64,
    median_vmm_boot_ms: u64,
    median_total_ms: u64,
    median_client_wall_ms: u64,
    accel: String,
    samples: Vec<Sample>,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

pub async fn vm_run(g: &Global, count: usize, memory: u64) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let c = client(g)?;
    let image = crate::cmd_image::resolve_or_build(g, "default").await?;
    let bar = crate::output::progress(g.output, count as u64);
    let mut samples = vec![];
    for i in 0..count {
        let name = format!("bench-{}-{i}", std::process::id());
        let req = CreateVmRequest {
            name: name.clone(),
            image: image.clone(),
            resources: Resources {
                vcpus: 1,
                memory_mib: memory,
            },
            labels: Default::default(),
            cmd: None,
            restart_policy: Default::default(),
            tenant: None,
            network: Default::default(),
            runtime: Default::default(),
            disks: Vec::new(),
            placement: Default::default(),
        };
        let t0 = Instant::now();
        let vm = c.vm_create(&req).await?;
        let id = vm.id.to_string();
        let vm = wait_for(&c, &id, Output::Json, Duration::from_secs(180), |v| {
            v.status.phase == VmPhase::Running || v.status.phase.is_terminal()
        })
        .await?;
        let wall = t0.elapsed().as_millis() as u64;
        let s = &vm.status;
        let (Some(launched), Some(running)) = (s.launched_ms, s.running_ms) else {
            bail!(
                "vm {name} ended {:?} without launch/ready times: {:?}",
                s.phase,
                s.message
            );
        };
        samples.push(Sample {
            control_plane_ms: launched.saturating_sub(s.created_ms),
            vmm_boot_ms: running.saturating_sub(launched),
            total_ms: running.saturating_sub(s.created_ms),
            client_wall_ms: wall,
            accel: s.accel.map(|a| a.to_string()).unwrap_or_default(),
            node: s.node.as_ref().map(ToString::to_string).unwrap_or_default(),
        });
        c.vm_delete(&id).await?;
        // Wait until it is gone so runs do not overlap.
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.vm_get(&id).await.is_ok() {
            if Instant::now() > deadline {
                bail!("vm {name} was not deleted within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = Summary {
        runs: samples.len(),
        median_control_plane_ms: median(samples.iter().map(|s| s.control_plane_ms).collect()),
        median_vmm_boot_ms: median(samples.iter().map(|s| s.vmm_boot_ms).collect()),
        median_total_ms: median(samples.iter().map(|s| s.total_ms).collect()),
        median_client_wall_ms: median(samples.iter().map(|s| s.client_wall_ms).collect()),
        accel: samples.first().map(|s| s.accel.clone()).unwrap_or_default(),
        samples,
    };
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = summary
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    vec![
                        (i + 1).to_string(),
                        s.control_plane_ms.to_string(),
                        s.vmm_boot_ms.to_string(),
                        s.total_ms.to_string(),
                        s.client_wall_ms.to_string(),
                        s.accel.clone(),
                    ]
                })
                .chain(std::iter::once(vec![
                    "median".to_owned(),
                    summary.median_control_plane_ms.to_string(),
                    summary.median_vmm_boot_ms.to_string(),
                    summary.median_total_ms.to_string(),
                    summary.median_client_wall_ms.to_string(),
                    summary.accel.clone(),
                ]))
                .collect();
            print!(
                "{}",
                crate::output::table(
                    &[
                        "RUN",
                        "CONTROL_PLANE_MS",
                        "VMM_BOOT_MS",
                        "TOTAL_MS",
                        "CLIENT_WALL_MS",
                        "ACCEL"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(())
}

/// `firefleet bench restore`: cold boot to ready vs restore to running, in one run.
pub async fn restore(
    g: &Global,
    count: usize,
    state_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let digest = crate::cmd_image::resolve_or_build(g, "default").await?;
    let images =
        firefleet_vmm::image::ImageStore::open(&crate::cmd_image::image_dir(g.image_dir.as_ref()))?;
    let image = images.resolve(&digest)?;
    let tmp = tempfile::Builder::new()
        .prefix("firefleet-bench-")
        .tempdir()?;
    let root = state_dir.unwrap_or_else(|| tmp.path().to_owned());
    let runtime = firefleet_vmm::QemuRuntime::new(root)?;
    let show = g.output == Output::Table;
    let report = tokio::task::spawn_blocking(move || {
        let bar = if show {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.enable_steady_tick(Duration::from_millis(120));
        let r = firefleet_vmm::bench::restore_vs_cold(&runtime, &image, count, &mut |m: &str| {
            bar.set_message(m.to_owned())
        });
        bar.finish_and_clear();
        r
    })
    .await??;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = (0..count)
                .map(|i| {
                    vec![
                        (i + 1).to_string(),
                        report
                            .cold_boot_ms
                            .get(i)
                            .map(|v| format!("{v:.0}"))
                            .unwrap_or_default(),
                        report
                            .restore_ms
                            .get(i)
                            .map(|v| format!("{v:.0}"))
                            .unwrap_or_default(),
                    ]
                })
                .chain(std::iter::once(vec![
                    "median".to_owned(),
                    format!("{:.0}", report.cold_boot_median_ms),
                    format!("{:.0}", report.restore_median_ms),
                ]))
                .collect();
            print!(
                "{}",
                crate::output::table(
                    &["RUN", "COLD_BOOT_TO_READY_MS", "RESTORE_TO_RUNNING_MS"],
                    &rows
                )
            );
            println!(
                "accel {}, {} MiB guest; VMM running again {:.0} ms after the restore call (median); snapshot {} MiB (paused {} ms to take it); restore/cold = {:.3}",
                report.accel,
                report.memory_mib,
                report.restore_vmm_running_median_ms,
                report.snapshot_bytes / (1024 * 1024),
                report.snapshot_pause_ms,
                report.restore_median_ms / report.cold_boot_median_ms.max(1.0)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(vec![3, 1, 2]), 2);
        assert_eq!(super::median(vec![4, 1, 2, 3]), 2);
        assert_eq!(super::median(vec![]), 0);
    }
}

#[derive(Debug, Serialize)]
struct FnSummary {
    cold_starts: usize,
    warm_calls: usize,
    /// Gateway latency of a cold start (instance restored from the template), ms.
    cold_p50_ms: u64,
    cold_max_ms: u64,
    /// Gateway latency of a warm call, ms.
    warm_p50_ms: u64,
    warm_max_ms: u64,
    /// Time in the handler, ms (cold and warm together).
    handler_p50_ms: u64,
    /// Client wall time of a warm call (CLI process not included), ms.
    warm_client_p50_ms: u64,
}

/// Deploys a small function, then `count` times: one call (a cold start: no instance), `warm`
/// calls (warm), and the instance removed so that the next call is cold again. Needs a policy
/// that does not pre-warm (`server --fn-policy fixed:N`), or the next call finds an instance.
pub async fn function(g: &Global, count: usize, warm: usize, memory: u64) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let c = client(g)?;
    let image = crate::cmd_image::resolve_or_build(g, "default").await?;
    let name = format!("bench-fn-{}", std::process::id());
    let req = firefleet_api::DeployFunctionRequest {
        name: name.clone(),
        tenant: None,
        image,
        cmd: vec!["sh".into(), "-c".into(), "cat".into()],
        http_port: None,
        http_path: None,
        resources: Resources {
            vcpus: 1,
            memory_mib: memory,
        },
        concurrency: 1,
        min: 0,
        max: 1,
        regions: vec![],
        timeout_ms: None,
        keep_alive_secs: None,
        runtime: Default::default(),
        public: false,
    };
    let bar = crate::output::progress(g.output, (count * (warm + 1)) as u64);
    bar.set_message("deploying");
    let v = crate::cmd_fn::wait_deployed(&c, c.deploy_function(&req).await?).await?;
    if v.function.status.phase != firefleet_types::FunctionPhase::Ready {
        bail!(
            "function {name} failed to deploy: {}",
            v.function
                .status
                .message
                .as_deref()
                .unwrap_or("no reason given")
        );
    }
    let result = async {
        let (mut cold, mut hot, mut handler, mut client_ms) = (vec![], vec![], vec![], vec![]);
        for i in 0..count {
            let r = c
                .invoke_function(&name, format!("cold-{i}").into_bytes(), None)
                .await?;
            if r.status != 200 {
                bail!("call {i}: expected status 200, got {r:?}");
            }
            if !r.cold_start {
                bail!(
                    "call {i} found a warm instance: the autoscaler keeps or pre-warms one; run \
                     this against a server started with `--fn-policy fixed:2` (no pre-warming)"
                );
            }
            cold.push(r.latency_ms);
            handler.push(r.duration_ms);
            bar.inc(1);
            for j in 0..warm {
                let t0 = Instant::now();
                let w = c
                    .invoke_function(&name, format!("warm-{i}-{j}").into_bytes(), None)
                    .await?;
                client_ms.push(t0.elapsed().as_millis() as u64);
                if w.status != 200 || w.cold_start || w.body != format!("warm-{i}-{j}") {
                    bail!("warm call {i}/{j}: unexpected answer {w:?}");
                }
                hot.push(w.latency_ms);
                handler.push(w.duration_ms);
                bar.inc(1);
            }
            // Remove the instance so the next call starts one again.
            c.vm_delete(r.instance.as_str()).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !c.get_function(&name).await?.instances.is_empty() {
                if Instant::now() > deadline {
                    bail!("the instance of {name} was not removed within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok((cold, hot, handler, client_ms))
    }
    .await;
    bar.finish_and_clear();
    let _ = c.delete_function(&name).await;
    let (cold, hot, handler, client_ms) = result?;
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    let summary = FnSummary {
        cold_starts: cold.len(),
        warm_calls: hot.len(),
        cold_p50_ms: median(cold.clone()),
        cold_max_ms: max(&cold),
        warm_p50_ms: median(hot.clone()),
        warm_max_ms: max(&hot),
        handler_p50_ms: median(handler),
        warm_client_p50_ms: median(client_ms),
    };
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Table => print!(
            "{}",
            crate::output::table(
                &["CALL", "COUNT", "P50 MS", "MAX MS"],
                &[
                    vec![
                        "cold start".into(),
                        summary.cold_starts.to_string(),
                        summary.cold_p50_ms.to_string(),
                        summary.cold_max_ms.to_string(),
                    ],
                    vec![
                        "warm".into(),
                        summary.warm_calls.to_string(),
                        summary.warm_p50_ms.to_string(),
                        summary.warm_max_ms.to_string(),
                    ],
                    vec![
                        "handler (both)".into(),
                        (summary.cold_starts + summary.warm_calls).to_string(),
                        summary.handler_p50_ms.to_string(),
                        "-".into(),
                    ],
                    vec![
                        "warm, client wall".into(),
                        summary.warm_calls.to_string(),
                        summary.warm_client_p50_ms.to_string(),
                        "-".into(),
                    ],
                ]
            )
        ),
    }
    Ok(())
}
