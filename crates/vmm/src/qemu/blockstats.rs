//! Block I/O counters of a QEMU VM: QMP `query-blockstats`, one [`DiskCounters`] per device.

use std::collections::BTreeMap;
use std::io;

use super::QemuRuntime;
use crate::runtime::{DiskCounters, VmmError, VmmIoStats};
use crate::statedir::validate_id;

/// The disks of a `query-blockstats` answer, in QEMU's order (the order they were created in:
/// attachment order). Each is named by its `device` (our `-drive id=`), else its node name when
/// one was given (not QEMU's generated `#block…`), else its `qdev` path; entries with no name or
/// no `stats` object are left out. Missing counters read as 0.
pub fn parse_blockstats(answer: &serde_json::Value) -> Vec<DiskCounters> {
    let Some(entries) = answer.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let text = |k: &str| e.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
            let device = text("device")
                .or_else(|| text("node-name").filter(|n| !n.starts_with('#')))
                .or_else(|| text("qdev"))?;
            let stats = e.get("stats")?.as_object()?;
            let n = |k: &str| stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            Some(DiskCounters {
                device: device.to_string(),
                read_bytes: n("rd_bytes"),
                write_bytes: n("wr_bytes"),
                read_ops: n("rd_operations"),
                write_ops: n("wr_operations"),
            })
        })
        .collect()
}

impl QemuRuntime {
    /// Per-disk counters of a running (or paused) VM, from QMP. QMP serves one client at a time:
    /// while another holds it, this fails after the QMP timeout rather than waiting.
    pub(super) fn block_io_stats(&self, id: &str) -> Result<VmmIoStats, VmmError> {
        const COMMAND: &str = "query-blockstats";
        validate_id(id)?;
        if !self.vm_dir(id).is_dir() {
            return Err(VmmError::NotFound(id.to_string()));
        }
        if self.live_process(id)?.is_none() {
            return Err(VmmError::Qmp {
                id: id.to_string(),
                command: COMMAND.into(),
                source: io::Error::new(io::ErrorKind::NotConnected, "the VMM is not running"),
            });
        }
        let answer = self.qmp(id, COMMAND)?;
        Ok(VmmIoStats {
            disks: parse_blockstats(&answer),
            metrics: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stats` as QEMU 8 writes them.
    fn stats(rd: u64, wr: u64, rd_ops: u64, wr_ops: u64) -> serde_json::Value {
        serde_json::json!({
            "unmap_operations": 0, "unmap_merged": 0, "flush_total_time_ns": 1200,
            "wr_highest_offset": 8392704, "wr_total_time_ns": 51000, "failed_wr_operations": 0,
            "failed_rd_operations": 0, "wr_merged": 0, "wr_bytes": wr, "timed_stats": [],
            "failed_unmap_operations": 0, "failed_flush_operations": 0, "account_invalid": true,
            "rd_total_time_ns": 9000, "invalid_unmap_operations": 0, "flush_operations": 3,
            "wr_operations": wr_ops, "unmap_bytes": 0, "rd_merged": 0, "rd_bytes": rd,
            "unmap_total_time_ns": 0, "invalid_flush_operations": 0, "account_failed": true,
            "rd_operations": rd_ops, "invalid_wr_operations": 0, "invalid_rd_operations": 0
        })
    }

    #[test]
    fn parses_a_query_blockstats_answer() {
        let answer = serde_json::json!([
            {
                "device": "d0",
                "parent": {
                    "stats": stats(0, 0, 0, 0),
                    "node-name": "#block087",
                    "driver-specific": {"discard-bytes-ok": 0, "discard-nb-ok": 0,
                        "driver": "file", "discard-nb-failed": 0}
                },
                "stats": stats(1_101_824, 4_198_400, 120, 35),
                "node-name": "#block138",
                "qdev": "/machine/peripheral-anon/device[0]"
            },
            // -blockdev with a node name and an anonymous -device.
            {"device": "", "node-name": "data1", "qdev": "/machine/peripheral-anon/device[1]",
             "stats": stats(512, 0, 1, 0)},
            // Only QEMU's generated names: the qdev path.
            {"device": "", "node-name": "#block9", "qdev": "vd2", "stats": stats(0, 7, 0, 1)},
            // Unnamed, or without stats: left out.
            {"device": "", "stats": stats(1, 1, 1, 1)},
            {"device": "d9"},
            {"device": "d10", "stats": {"rd_bytes": "junk"}}
        ]);
        let disks = parse_blockstats(&answer);
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["d0", "data1", "vd2", "d10"]);
        assert_eq!(
            disks[0],
            DiskCounters {
                device: "d0".into(),
                read_bytes: 1_101_824,
                write_bytes: 4_198_400,
                read_ops: 120,
                write_ops: 35,
            }
        );
        assert_eq!((disks[1].read_bytes, disks[2].write_ops), (512, 1));
        assert_eq!(disks[3].read_bytes, 0);
        assert!(parse_blockstats(&serde_json::json!([])).is_empty());
        assert!(parse_blockstats(&serde_json::json!({"error": 1})).is_empty());
    }

    #[test]
    fn unknown_or_stopped_vms_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rt =
            QemuRuntime::with_qemu(dir.path().to_path_buf(), "/nonexistent/qemu".into()).unwrap();
        assert!(matches!(
            rt.block_io_stats("nope"),
            Err(VmmError::NotFound(_))
        ));
        assert!(matches!(
            rt.block_io_stats("a/b"),
            Err(VmmError::InvalidId(_))
        ));
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        let err = rt.block_io_stats("gone").unwrap_err();
        assert!(matches!(err, VmmError::Qmp { .. }), "{err}");
    }
}
