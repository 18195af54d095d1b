//! What a VM's state directory tells of it, the same for every backend: its VMM process, what
//! the guest said on the console, how the VMM ended. A backend adds what only its VMM knows
//! (paused, its own readiness signals).

use std::path::Path;

use crate::console;
use crate::error::VmmError;
use crate::process::{exit_record, ProcessId};
use crate::statedir::CONSOLE_LOG;
use crate::vm::{Observation, GUEST_READY_MARKER};

/// The observation of VM `id` from its state directory `dir` and its recorded process `p`
/// (`paused` false: the backend asks its VMM).
pub fn from_state_dir(id: &str, dir: &Path, p: Option<ProcessId>) -> Result<Observation, VmmError> {
    let running = p.is_some_and(|p| p.is_alive());
    let guest = console::guest_events(&dir.join(CONSOLE_LOG))?;
    Ok(Observation {
        id: id.to_string(),
        pid: p.map(|p| p.pid),
        running,
        guest_ready: guest.ready || dir.join(GUEST_READY_MARKER).exists(),
        guest_exit_code: guest.exit_code,
        powered_off: guest.powering_off && !running,
        vmm_exit: exit_record(dir, p),
        paused: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_a_process_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let o = from_state_dir("vm", dir.path(), None).unwrap();
        assert_eq!(o.id, "vm");
        assert!(!o.running && !o.guest_ready && !o.powered_off && o.vmm_exit.is_none());
        std::fs::write(dir.path().join(GUEST_READY_MARKER), "").unwrap();
        assert!(from_state_dir("vm", dir.path(), None).unwrap().guest_ready);
    }
}
