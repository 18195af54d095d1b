//! End to end: a serverless function on real microVMs. Deploy boots a template VM and
//! snapshots it; the first invocation waits for an instance restored from that snapshot (a
//! cold start), the second finds it warm; once idle past its keep-alive the function scales to
//! zero; a burst of concurrent invocations gets several instances, and every answer is right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firefleet_testkit::cluster::Cluster;

/// Prints the request's first line back with a greeting; `slow-*` requests take a second.
const HANDLER: &str =
    "read x; case \"$x\" in slow-*) sleep 1;; esac; echo \"hello $x from $(hostname)\"";

/// An HTTP workload: busybox httpd on port 8080 with a CGI script answering `web-<body>`.
const WEB: &str = "mkdir -p /tmp/www/cgi-bin; f=/tmp/www/cgi-bin/fn; echo '#!/bin/sh' > $f; \
    echo 'printf \"Content-Type: text/plain\\r\\n\\r\\nweb-%s\" \"$(head -c $CONTENT_LENGTH)\"' >> $f; \
    chmod +x $f; exec httpd -f -p 8080 -h /tmp/www";

fn instances(c: &Cluster, f: &str) -> Vec<serde_json::Value> {
    c.json(&["fn", "get", f])["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn cold_start_warm_scale_to_zero_and_burst() {
    // Short timers so the test sees the keep-alive pass: the engine ticks every 500 ms with
    // 1 s bins, and a function with little history keeps idle instances 8 s.
    let mut c = Cluster::start_with(&[
        "--fn-tick-ms",
        "500",
        "--fn-bin-secs",
        "1",
        "--fn-keep-alive-secs",
        "8",
        "--fn-hold-secs",
        "180",
    ]);
    c.start_agent("node-1", &["cloud=aws", "region=eu-west"], 8);
    c.wait_nodes_ready(1);

    // Deploy: waits for the template (booted, snapshotted, stopped).
    let f = c.json(&[
        "fn", "deploy", "hello", "--cmd", HANDLER, "--memory", "128", "--max", "4",
    ]);
    assert_eq!(f["spec"]["name"], "hello", "{f}");
    assert_eq!(f["status"]["phase"], "ready", "{f}");
    let template = f["status"]["template"]["vm"].as_str().unwrap().to_owned();
    assert_eq!(
        instances(&c, "hello").len(),
        0,
        "no instance before the first call"
    );
    let vms = c.json(&["vm", "ls"]);
    let tpl = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == template.as_str())
        .expect("the template VM is listed");
    assert_eq!(tpl["spec"]["desired"], "stopped", "{tpl}");

    // First call: a cold start from the template.
    let cold = c.json(&["fn", "invoke", "hello", "--data", "one"]);
    assert_eq!(cold["status"], 200, "{cold}");
    assert!(
        cold["body"]
            .as_str()
            .unwrap()
            .starts_with("hello one from "),
        "{cold}"
    );
    assert_eq!(cold["cold_start"], true, "{cold}");
    // Second call: the same instance, warm.
    let warm = c.json(&["fn", "invoke", "hello", "--data", "two"]);
    assert_eq!(warm["status"], 200, "{warm}");
    assert!(warm["body"]
        .as_str()
        .unwrap()
        .starts_with("hello two from "));
    assert_eq!(warm["cold_start"], false, "{warm}");
    assert_eq!(warm["instance"], cold["instance"]);
    let (cold_ms, warm_ms) = (
        cold["latency_ms"].as_u64().unwrap(),
        warm["latency_ms"].as_u64().unwrap(),
    );
    eprintln!("latency: cold start {cold_ms} ms, warm {warm_ms} ms");
    assert!(warm_ms < cold_ms, "warm {warm_ms} ms vs cold {cold_ms} ms");
    // The instance runs on the node the scheduler chose, restored (not booted): its console
    // has no boot of its own.
    let inst = instances(&c, "hello");
    assert_eq!(inst.len(), 1, "{inst:?}");
    assert_eq!(inst[0]["phase"], "running");
    assert_eq!(inst[0]["region"], "eu-west");

    // Idle past the keep-alive: zero instances.
    c.wait(Duration::from_secs(90), "scale to zero", || {
        instances(&c, "hello").is_empty()
    });

    // A burst of concurrent calls: several instances, every answer right.
    let n = 6;
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let c = &c;
                s.spawn(move || c.json(&["fn", "invoke", "hello", "--data", &format!("slow-{i}")]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut served_by = std::collections::BTreeSet::new();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["status"], 200, "{a}");
        assert!(
            a["body"]
                .as_str()
                .unwrap()
                .starts_with(&format!("hello slow-{i} from ")),
            "{a}"
        );
        served_by.insert(a["instance"].as_str().unwrap().to_owned());
    }
    eprintln!("burst of {n}: served by {} instances", served_by.len());
    assert!(served_by.len() >= 2, "served by {served_by:?}");
    let view = c.json(&["fn", "get", "hello"]);
    assert!(
        view["counters"]["invocations"].as_u64().unwrap() >= 2 + n as u64,
        "{view}"
    );
    assert!(
        view["counters"]["cold_starts"].as_u64().unwrap() >= 2,
        "{view}"
    );

    // The end users' route, with the tenant's token (the function is not public).
    let tenant = view["spec"]["tenant"].as_str().unwrap().to_owned();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(c.ca())
        .args(["-H", &format!("Authorization: Bearer {}", c.admin_token())])
        .args(["--data-binary", "plain"])
        .arg(format!("{}/fn/{tenant}/hello", c.server_url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello plain from "));
    // Without a token it is as good as missing (not public; names cannot be probed).
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(c.ca())
        .args(["--data-binary", "plain"])
        .arg(format!("{}/fn/{tenant}/hello", c.server_url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // Per-function series in /metrics (an admin's or a metrics token's).
    let metrics = c.metrics();
    assert!(
        metrics.contains(&format!(
            "firefleet_function_cold_starts_total{{tenant=\"{tenant}\",function=\"hello\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("firefleet_function_latency_seconds_bucket"));

    // HTTP mode: the workload (busybox httpd with a CGI script) serves from boot; each
    // invocation is POSTed to it inside the instance.
    let web = c.json(&[
        "fn",
        "deploy",
        "web",
        "--cmd",
        WEB,
        "--port",
        "8080",
        "--path",
        "/cgi-bin/fn",
        "--concurrency",
        "4",
        "--memory",
        "128",
    ]);
    assert_eq!(web["status"]["phase"], "ready", "{web}");
    let r = c.json(&["fn", "invoke", "web", "--data", "ping"]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], "web-ping", "{r}");

    // Its template VM removed by hand: the function makes a new one and goes on.
    c.ok(&["vm", "rm", &template]);
    c.wait(Duration::from_secs(120), "a new template", || {
        let v = c.json(&["fn", "get", "hello"]);
        v["status"]["phase"] == "ready"
            && v["status"]["template"]["vm"]
                .as_str()
                .is_some_and(|t| t != template)
    });
    let again = c.json(&["fn", "invoke", "hello", "--data", "again"]);
    assert_eq!(again["status"], 200, "{again}");
    assert!(again["body"]
        .as_str()
        .unwrap()
        .starts_with("hello again from "));

    // Remove: every VM of the functions goes.
    c.ok(&["fn", "rm", "hello"]);
    c.ok(&["fn", "rm", "web"]);
    c.wait(
        Duration::from_secs(60),
        "the function's VMs are removed",
        || {
            c.json(&["vm", "ls"])
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["spec"]["function"].is_null())
        },
    );
}
