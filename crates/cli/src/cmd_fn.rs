//! `firefleet fn`: serverless functions.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use firefleet_api::{DeployFunctionRequest, FunctionView};
use firefleet_types::{FunctionPhase, Resources};

use crate::{
    args::{FnCommand, FnDeployArgs, Global, Output},
    cmd_vm::{client, spinner},
    output::{opt, print, table, wire},
};

/// The longest `fn deploy` waits for the template.
const DEPLOY_WAIT: Duration = Duration::from_secs(600);

const HEADERS: &[&str] = &[
    "NAME",
    "TENANT",
    "PHASE",
    "INSTANCES",
    "WANTED",
    "MIN/MAX",
    "INVOCATIONS",
    "COLD",
    "ERRORS",
];

fn row(v: &FunctionView) -> Vec<String> {
    let s = &v.function.spec;
    let ready = v
        .instances
        .iter()
        .filter(|i| i.phase == firefleet_types::VmPhase::Running)
        .count();
    vec![
        s.name.clone(),
        s.tenant.to_string(),
        wire(&v.function.status.phase),
        format!("{ready}/{}", v.instances.len()),
        v.wanted.values().sum::<u32>().to_string(),
        format!("{}/{}", s.min, s.max),
        v.counters.invocations.to_string(),
        v.counters.cold_starts.to_string(),
        v.counters.errors.to_string(),
    ]
}

fn show(output: Output, v: &FunctionView) -> anyhow::Result<()> {
    if output == Output::Json {
        return print(output, v, &[], vec![]);
    }
    let s = &v.function.spec;
    print!("{}", table(HEADERS, &[row(v)]));
    println!();
    println!(
        "handler: {} {}",
        if s.http_port.is_some() {
            "http"
        } else {
            "command"
        },
        match s.http_port {
            Some(p) => format!("port {p} {}", s.http_path.as_deref().unwrap_or("/")),
            None => s.cmd.join(" "),
        }
    );
    if let Some(t) = &v.function.status.template {
        println!("template: snapshot {:?} of VM {}", t.snapshot, t.vm);
    }
    if let Some(m) = &v.function.status.message {
        println!("message: {m}");
    }
    if let Some(r) = &v.reason {
        println!("autoscaler: {r}");
    }
    if !v.instances.is_empty() {
        println!();
        let rows = v
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    wire(&i.phase),
                    opt(&i.node),
                    opt(&i.region),
                    i.in_flight.to_string(),
                    i.keep_alive_until_ms
                        .filter(|_| i.idle_since_ms.is_some())
                        .map(|t| {
                            let now = crate::output::now_ms();
                            format!("{}s", t.saturating_sub(now) / 1000)
                        })
                        .unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect::<Vec<_>>();
        print!(
            "{}",
            table(
                &[
                    "INSTANCE",
                    "PHASE",
                    "NODE",
                    "REGION",
                    "IN-FLIGHT",
                    "KEEP-ALIVE"
                ],
                &rows
            )
        );
    }
    Ok(())
}

pub async fn function(g: &Global, cmd: FnCommand) -> anyhow::Result<()> {
    let c = client(g)?;
    match cmd {
        FnCommand::Deploy(a) => deploy(g, &c, *a).await,
        FnCommand::Ls => {
            let l = c.list_functions().await?;
            print(g.output, &l, HEADERS, l.items.iter().map(row).collect())
        }
        FnCommand::Get { name } => show(g.output, &c.get_function(&name).await?),
        FnCommand::Rm { name } => {
            c.delete_function(&name).await?;
            if g.output == Output::Json {
                println!("{}", serde_json::json!({ "removed": name }));
            } else {
                eprintln!("function {name} removed (its instances are stopping)");
            }
            Ok(())
        }
        FnCommand::Logs { name } => {
            let logs = c.function_logs(&name).await?;
            if g.output == Output::Json {
                return print(g.output, &logs, &[], vec![]);
            }
            for l in &logs.items {
                println!("==> {} ({}) <==", l.name, l.vm);
                print!("{}", l.data);
                if !l.data.ends_with('\n') && !l.data.is_empty() {
                    println!();
                }
            }
            Ok(())
        }
        FnCommand::Invoke { name, data, region } => {
            let body = match data.as_deref() {
                None => Vec::new(),
                Some("-") => {
                    let mut b = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut b)
                        .context("reading the request body from standard input")?;
                    b
                }
                Some(d) => match d.strip_prefix('@') {
                    Some(path) => std::fs::read(path)
                        .with_context(|| format!("reading the request body from {path}"))?,
                    None => d.as_bytes().to_vec(),
                },
            };
            let r = c.invoke_function(&name, body, region.as_deref()).await?;
            if g.output == Output::Json {
                return print(g.output, &r, &[], vec![]);
            }
            let out =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &r.body_b64)
                    .unwrap_or_else(|_| r.body.clone().into_bytes());
            std::io::stdout().write_all(&out)?;
            eprintln!(
                "[{} on {} ({}) in {} ms, handler {} ms{}]",
                r.status,
                r.instance,
                r.node,
                r.latency_ms,
                r.duration_ms,
                if r.cold_start { ", cold start" } else { "" }
            );
            if r.status >= 300 {
                if !r.stderr.is_empty() {
                    eprint!("{}", r.stderr);
                }
                bail!(
                    "the function answered {}{}",
                    r.status,
                    r.error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

/// Waits until a function is no longer deploying (its template made, or failed).
pub(crate) async fn wait_deployed(
    c: &firefleet_client::Client,
    mut v: FunctionView,
) -> anyhow::Result<FunctionView> {
    let start = Instant::now();
    while v.function.status.phase == FunctionPhase::Deploying {
        if start.elapsed() > DEPLOY_WAIT {
            bail!(
                "function {} is still deploying after {} s",
                v.function.spec.name,
                DEPLOY_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        v = c.get_function(&v.function.spec.name).await?;
    }
    Ok(v)
}

async fn deploy(g: &Global, c: &firefleet_client::Client, a: FnDeployArgs) -> anyhow::Result<()> {
    let image = crate::cmd_image::resolve_or_build(g, &a.image).await?;
    let req = DeployFunctionRequest {
        name: a.name.clone(),
        tenant: a.tenant.as_deref().map(str::parse).transpose()?,
        image,
        cmd: vec!["sh".to_owned(), "-c".to_owned(), a.cmd],
        http_port: a.port,
        http_path: a.path,
        resources: Resources {
            vcpus: a.vcpus,
            memory_mib: a.memory,
        },
        concurrency: a.concurrency,
        min: a.min,
        max: a.max,
        regions: a.regions,
        timeout_ms: Some(a.timeout_secs.saturating_mul(1000)),
        keep_alive_secs: a.keep_alive_secs,
        runtime: a.runtime.parse()?,
        public: a.public,
    };
    let (mut v, warnings) = c.deploy_function_with_warnings(&req).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !a.no_wait {
        let bar = spinner(g.output);
        bar.set_message(format!(
            "deploying {}: booting and snapshotting the template",
            a.name
        ));
        let waited = wait_deployed(c, v).await;
        bar.finish_and_clear();
        v = waited?;
        if v.function.status.phase == FunctionPhase::Failed {
            bail!(
                "function {} failed to deploy: {}",
                a.name,
                v.function
                    .status
                    .message
                    .as_deref()
                    .unwrap_or("no reason given")
            );
        }
    }
    show(g.output, &v)
}
