//! Firecracker's metrics: the newest object of a VM's metrics file, and the running sums that
//! make its I/O counters (Firecracker writes each counter as its increase since the previous
//! flush).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::{Arc, Mutex};

use super::config::{Action, METRICS_FILE};
use super::{api_failed, FirecrackerRuntime};
use crate::error::VmmError;
use crate::process::ProcessId;
use crate::statedir::{self, validate_id};
use crate::stats::{fc_disk_counters, FcMetricsSums};
use crate::vm::VmmIoStats;

/// One VM's metrics sums, locked on their own (a first read after a restart may be long).
pub(super) type MetricSums = Arc<Mutex<Option<(ProcessId, FcMetricsSums)>>>;

/// Per VM: the process the sums belong to, and the sums.
pub(super) type AllMetricSums = Arc<Mutex<HashMap<String, MetricSums>>>;

impl FirecrackerRuntime {
    /// The VM's metrics: flushes them (`FlushMetrics`) and returns the newest JSON object of the
    /// metrics file. Before `InstanceStart` Firecracker refuses the flush; the last object
    /// written (if any) is returned then.
    pub fn metrics(&self, id: &str) -> Result<serde_json::Value, VmmError> {
        validate_id(id)?;
        if self.live_process(id)?.is_some() {
            let _ = self.api(id).put(
                "/actions",
                &Action {
                    action_type: "FlushMetrics",
                },
            );
        }
        let path = self.run_dir(id).join(METRICS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VmmError::NotFound(id.to_string()))
            }
            Err(e) => return Err(VmmError::State { path, source: e }),
        };
        last_json_object(&text).ok_or_else(|| VmmError::CorruptState {
            path,
            source: serde_json::Error::io(io::Error::new(
                io::ErrorKind::InvalidData,
                "no complete metrics object yet",
            )),
        })
    }

    /// The VM's disk counters and all its metrics, summed since its process started.
    pub(super) fn vmm_io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        statedir::existing_vm_dir(&self.state_root, id)?;
        let flush = "firecracker API PUT /actions (FlushMetrics)";
        let Some(p) = self.live_process(id)? else {
            return Err(VmmError::Qmp {
                id: id.to_string(),
                command: flush.into(),
                source: io::Error::new(io::ErrorKind::NotConnected, "the VMM is not running"),
            });
        };
        self.api(id)
            .put(
                "/actions",
                &Action {
                    action_type: "FlushMetrics",
                },
            )
            .map_err(|e| api_failed(id, e))?;
        let path = self.run_dir(id).join(METRICS_FILE);
        let sums = Arc::clone(
            self.metric_sums
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id.to_string())
                .or_default(),
        );
        let mut sums = sums.lock().unwrap_or_else(|e| e.into_inner());
        let (_, sums) = match &mut *sums {
            Some(s) if s.0 == p => s,
            // Another process: its file starts over.
            other => other.insert((p, FcMetricsSums::default())),
        };
        sums.update(&path)
            .map_err(|source| VmmError::State { path, source })?;
        let metrics = sums.totals().clone();
        Ok(VmmIoStats {
            disks: fc_disk_counters(&metrics),
            metrics,
        })
    }
}

/// The last complete JSON object in a file of concatenated objects (Firecracker writes one per
/// flush, each on its own line).
fn last_json_object(text: &str) -> Option<serde_json::Value> {
    // The part already summed may have been released (a hole reads as NULs).
    serde_json::Deserializer::from_str(text.trim_start_matches('\0'))
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_newest_metrics_object() {
        let text = "{\"utc_timestamp_ms\":1}\n{\"utc_timestamp_ms\":2}\n{\"utc_tim";
        assert_eq!(
            last_json_object(text).unwrap()["utc_timestamp_ms"],
            serde_json::json!(2)
        );
        assert!(last_json_object("").is_none());
    }
}
