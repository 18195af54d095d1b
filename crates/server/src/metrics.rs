//! Request counters for `/metrics`. Object gauges (VMs by phase, nodes by readiness) are read
//! from the store when scraped.

use std::{collections::BTreeMap, sync::Mutex};

/// Counters kept in memory.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    placements: Mutex<(u64, u64)>,
    /// Admission evaluations, and the time they took in total (nanoseconds).
    pub admissions: std::sync::atomic::AtomicU64,
    /// See `admissions`.
    pub admission_ns: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// Counts one HTTP request. Every label comes from a closed set, whatever the caller
    /// sends: the method is one of the standard ones or `other`, the route is a route template
    /// (or `unmatched`), the status is a number below 600.
    pub fn request(&self, method: &axum::http::Method, route: Option<&str>, status: u16) {
        let method = method_label(method);
        let route = route.unwrap_or("unmatched");
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_owned(), route.to_owned(), status.min(599)))
                .or_default() += 1;
        }
    }

    /// Counts scheduling outcomes.
    pub fn placements(&self, placed: u64, unschedulable: u64) {
        if let Ok(mut p) = self.placements.lock() {
            p.0 += placed;
            p.1 += unschedulable;
        }
    }

    /// Renders the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(
            "# HELP firefleet_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE firefleet_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "firefleet_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        if let Ok(p) = self.placements.lock() {
            out.push_str(
                "# HELP firefleet_scheduler_placements_total Placement decisions by outcome.\n",
            );
            out.push_str("# TYPE firefleet_scheduler_placements_total counter\n");
            let _ = writeln!(
                out,
                "firefleet_scheduler_placements_total{{outcome=\"placed\"}} {}",
                p.0
            );
            let _ = writeln!(
                out,
                "firefleet_scheduler_placements_total{{outcome=\"unschedulable\"}} {}",
                p.1
            );
        }
        use std::sync::atomic::Ordering::Relaxed;
        out.push_str(
            "# HELP firefleet_admissions_total Admission evaluations (VMs and functions).\n",
        );
        out.push_str("# TYPE firefleet_admissions_total counter\n");
        let _ = writeln!(
            out,
            "firefleet_admissions_total {}",
            self.admissions.load(Relaxed)
        );
        out.push_str(
            "# HELP firefleet_admission_seconds_total Time spent evaluating admission policies.\n",
        );
        out.push_str("# TYPE firefleet_admission_seconds_total counter\n");
        let _ = writeln!(
            out,
            "firefleet_admission_seconds_total {}",
            self.admission_ns.load(Relaxed) as f64 / 1e9
        );
    }
}

/// The metrics label of a request method: the standard methods by name, anything else `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Escapes a Prometheus label value.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
