//! An in-memory [`Runtime`] for unit tests of the code above this crate (the agent's executor):
//! no process, no hypervisor. Behind the `test-util` feature, never in the production build.
//!
//! It keeps its VMs in memory with a [`FakePhase`], records every call in order ([`Call`]:
//! method, VM id, the arguments that matter), and can be told, per VM id and [`Method`], to
//! fail once with a chosen [`VmmError`] ([`FakeRuntime::fail`]) or to hang until released
//! ([`FakeRuntime::hang`], which returns a [`Gate`]), so that a test can stop an operation in
//! the middle of a step and simulate a crash of its caller there.
//!
//! Given a state root ([`FakeRuntime::with_state_root`]), a VM also has a state directory there
//! from launch (or restore) until it is removed, as the real backends have, and a snapshot is
//! written there as the QEMU backend writes it (a manifest and a small state file), so that it
//! can be checked, packed, moved and restored from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::channel::{ExecOutput, InvokeHandler, InvokeOutput};
use crate::runtime::{
    ConsoleChunk, LaunchConfig, Observation, Runtime, SnapshotInfo, VmProcessInfo, VmmError,
};

/// A [`Runtime`] method, as the fake records and configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// [`Runtime::launch`].
    Launch,
    /// [`Runtime::list`].
    List,
    /// [`Runtime::observe`].
    Observe,
    /// [`Runtime::stop`].
    Stop,
    /// [`Runtime::console`].
    Console,
    /// [`Runtime::remove`].
    Remove,
    /// [`Runtime::pause`].
    Pause,
    /// [`Runtime::resume`].
    Resume,
    /// [`Runtime::snapshot`].
    Snapshot,
    /// [`Runtime::exec`].
    Exec,
    /// [`Runtime::invoke`].
    Invoke,
    /// [`Runtime::io_stats`].
    IoStats,
    /// [`Runtime::restore`].
    Restore,
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which method.
    pub method: Method,
    /// The VM it was about (empty for [`Method::List`]).
    pub id: String,
    /// The arguments that matter, written out (`grace=10s`, a snapshot's name, an argv…).
    pub args: String,
}

/// Where a fake VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakePhase {
    /// Its VMM runs.
    Running,
    /// Its VMM runs, the guest's vCPUs are paused.
    Paused,
    /// Its VMM is gone; the state stays until it is removed.
    Exited,
}

/// A VM the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeVm {
    /// Its phase.
    pub phase: FakePhase,
    /// Its (invented) VMM pid.
    pub pid: i32,
    /// The guest has said it is ready.
    pub guest_ready: bool,
    /// The workload's exit code, as the console would show it.
    pub guest_exit_code: Option<i32>,
    /// The guest powered itself off.
    pub powered_off: bool,
    /// How the VMM ended.
    pub vmm_exit: Option<String>,
    /// The config it was launched or restored with.
    pub config: LaunchConfig,
    /// The console's bytes.
    pub console: Vec<u8>,
    /// Names of the snapshots taken of it.
    pub snapshots: Vec<String>,
    /// The snapshot directory it was restored from, if it was.
    pub restored_from: Option<PathBuf>,
}

/// What the fake does at one method for one VM, once.
enum Fault {
    Fail(VmmError),
    Hang(Arc<GateState>),
}

#[derive(Default)]
struct GateState {
    /// (reached, released, crashed)
    flags: Mutex<(bool, bool, bool)>,
    cv: Condvar,
}

/// A hang set with [`FakeRuntime::hang`]: the call blocks at it until [`Gate::release`] (or
/// [`Gate::crash`]).
#[derive(Clone)]
pub struct Gate(Arc<GateState>);

impl Gate {
    /// Waits until a call has reached the gate (and blocks there); false after `timeout`.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut flags = lock(&self.0.flags);
        while !flags.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            flags = match self.0.cv.wait_timeout(flags, left) {
                Ok((f, _)) => f,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Lets the blocked call (or the next one to reach the gate) go on as if nothing happened.
    pub fn release(&self) {
        lock(&self.0.flags).1 = true;
        self.0.cv.notify_all();
    }

    /// Lets the blocked call end the way a crash of its caller's process would: it unwinds
    /// (without the panic message) and nothing after it in that thread runs.
    pub fn crash(&self) {
        let mut flags = lock(&self.0.flags);
        flags.1 = true;
        flags.2 = true;
        self.0.cv.notify_all();
    }

    /// Blocks until released; true if released by [`Gate::crash`].
    fn pass(&self) -> bool {
        let mut flags = lock(&self.0.flags);
        flags.0 = true;
        self.0.cv.notify_all();
        while !flags.1 {
            flags = match self.0.cv.wait(flags) {
                Ok(f) => f,
                Err(e) => e.into_inner(),
            };
        }
        flags.2
    }
}

#[derive(Default)]
struct State {
    vms: BTreeMap<String, FakeVm>,
    calls: Vec<Call>,
    faults: HashMap<(String, Method), Fault>,
    next_pid: i32,
}

/// An in-memory VMM backend (see the module doc).
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
    root: Option<PathBuf>,
    /// Whether a launched VM's guest is ready at once (default) or only when a test says so.
    not_ready_on_launch: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeRuntime {
    /// A fake with no VMs, keeping no state directories.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, giving each VM a state directory `root/<id>` while it exists.
    pub fn with_state_root(root: &Path) -> Self {
        Self {
            root: Some(root.to_owned()),
            ..Self::default()
        }
    }

    /// Launched VMs' guests are not ready until [`FakeRuntime::update`] says so.
    #[must_use]
    pub fn guests_boot_slowly(mut self) -> Self {
        self.not_ready_on_launch = true;
        self
    }

    /// The next call of `method` for VM `id` returns `error` (once).
    pub fn fail(&self, id: &str, method: Method, error: VmmError) {
        lock(&self.state)
            .faults
            .insert((id.to_owned(), method), Fault::Fail(error));
    }

    /// The next call of `method` for VM `id` blocks (once), after it is recorded and before it
    /// does anything, until the returned gate is released.
    pub fn hang(&self, id: &str, method: Method) -> Gate {
        let gate = Arc::new(GateState::default());
        lock(&self.state)
            .faults
            .insert((id.to_owned(), method), Fault::Hang(gate.clone()));
        Gate(gate)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The methods called for VM `id` so far, in order (observations left out: they are many
    /// and say nothing about what was done).
    pub fn actions(&self, id: &str) -> Vec<Method> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.id == id && c.method != Method::Observe)
            .map(|c| c.method)
            .collect()
    }

    /// A copy of VM `id`, if the fake holds it.
    pub fn vm(&self, id: &str) -> Option<FakeVm> {
        lock(&self.state).vms.get(id).cloned()
    }

    /// Changes VM `id` as `f` says (the guest becomes ready, the VMM dies…); false if there is
    /// no such VM.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut FakeVm)) -> bool {
        match lock(&self.state).vms.get_mut(id) {
            Some(vm) => {
                f(vm);
                true
            }
            None => false,
        }
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        match &self.root {
            Some(root) => root.join(id),
            None => PathBuf::from("/nonexistent/fake-vms").join(id),
        }
    }

    /// Records the call and carries out a fault set for it: fails, or blocks until released.
    fn enter(&self, method: Method, id: &str, args: String) -> Result<(), VmmError> {
        let fault = {
            let mut s = lock(&self.state);
            s.calls.push(Call {
                method,
                id: id.to_owned(),
                args,
            });
            s.faults.remove(&(id.to_owned(), method))
        };
        match fault {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Hang(g)) => {
                if Gate(g).pass() {
                    std::panic::resume_unwind(Box::new("simulated crash"));
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn not_found(id: &str) -> VmmError {
        VmmError::NotFound(id.to_owned())
    }

    /// Starts (or restarts) VM `cfg.id`; `from` is the snapshot of a restore.
    fn start(&self, cfg: &LaunchConfig, from: Option<&Path>) -> Result<VmProcessInfo, VmmError> {
        let state_dir = self.state_dir(&cfg.id);
        if self.root.is_some() {
            std::fs::create_dir_all(&state_dir).map_err(|source| VmmError::State {
                path: state_dir.clone(),
                source,
            })?;
        }
        let mut s = lock(&self.state);
        if from.is_none() {
            if let Some(vm) = s.vms.get(&cfg.id).filter(|v| v.phase != FakePhase::Exited) {
                return Ok(VmProcessInfo {
                    id: cfg.id.clone(),
                    pid: vm.pid,
                    start_time: 1,
                    state_dir,
                    already_running: true,
                });
            }
        }
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        let snapshots = s
            .vms
            .get(&cfg.id)
            .map(|v| v.snapshots.clone())
            .unwrap_or_default();
        s.vms.insert(
            cfg.id.clone(),
            FakeVm {
                phase: FakePhase::Running,
                pid,
                guest_ready: from.is_some() || !self.not_ready_on_launch,
                guest_exit_code: None,
                powered_off: false,
                vmm_exit: None,
                config: cfg.clone(),
                console: Vec::new(),
                snapshots,
                restored_from: from.map(Path::to_owned),
            },
        );
        Ok(VmProcessInfo {
            id: cfg.id.clone(),
            pid,
            start_time: 1,
            state_dir,
            already_running: false,
        })
    }

    fn with_vm<T>(&self, id: &str, f: impl FnOnce(&mut FakeVm) -> T) -> Result<T, VmmError> {
        lock(&self.state)
            .vms
            .get_mut(id)
            .map(f)
            .ok_or_else(|| Self::not_found(id))
    }
}

/// The state file of a fake snapshot.
const FAKE_VMSTATE: &[u8] = b"fake vmstate";

/// Writes a snapshot directory `dir` as the QEMU backend lays it out (its manifest and state
/// file), complete or not at all, so that code checking, packing and unpacking snapshots takes
/// it for a real one; its size in bytes.
fn write_snapshot(dir: &Path, name: &str, config: &LaunchConfig) -> Result<u64, VmmError> {
    let state_err = |path: &Path| {
        let path = path.to_owned();
        move |source| VmmError::State { path, source }
    };
    let manifest = serde_json::json!({
        "format": 1,
        "name": name,
        "vm_id": config.id,
        "config": config,
        "kernel_cmdline": "",
        "qemu_version": "fake",
        "created_unix_ms": 0,
        "pause_ms": 1,
        "files": [{"name": "vmstate.bin", "size": FAKE_VMSTATE.len()}],
        "disks": [],
    });
    let manifest = manifest.to_string();
    let tmp = dir.with_file_name(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(state_err(&tmp))?;
    std::fs::write(tmp.join("vmstate.bin"), FAKE_VMSTATE).map_err(state_err(&tmp))?;
    std::fs::write(tmp.join("manifest.json"), &manifest).map_err(state_err(&tmp))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(state_err(dir))?;
    Ok((FAKE_VMSTATE.len() + manifest.len()) as u64)
}

fn launch_args(cfg: &LaunchConfig) -> String {
    format!(
        "vcpus={} memory_mib={} net={} disks={}",
        cfg.vcpus,
        cfg.memory_mib,
        cfg.net.as_ref().map_or("none", |n| n.tap.as_str()),
        cfg.disks.len()
    )
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    /// `root` of [`FakeRuntime::with_state_root`]; a fake without one keeps no directories and
    /// answers `list`, `console` and `remove` from memory, so the path is never read.
    fn state_root(&self) -> &Path {
        self.root
            .as_deref()
            .unwrap_or(Path::new("/nonexistent/firefleet-fake-runtime"))
    }

    fn launch(&self, cfg: &LaunchConfig) -> Result<VmProcessInfo, VmmError> {
        self.enter(Method::Launch, &cfg.id, launch_args(cfg))?;
        self.start(cfg, None)
    }

    fn list(&self) -> Result<Vec<String>, VmmError> {
        self.enter(Method::List, "", String::new())?;
        Ok(lock(&self.state).vms.keys().cloned().collect())
    }

    fn observe(&self, id: &str) -> Result<Observation, VmmError> {
        self.enter(Method::Observe, id, String::new())?;
        self.with_vm(id, |vm| Observation {
            id: id.to_owned(),
            pid: Some(vm.pid),
            running: vm.phase != FakePhase::Exited,
            guest_ready: vm.guest_ready,
            guest_exit_code: vm.guest_exit_code,
            powered_off: vm.powered_off,
            vmm_exit: vm.vmm_exit.clone(),
            paused: vm.phase == FakePhase::Paused,
        })
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), VmmError> {
        self.enter(Method::Stop, id, format!("grace={}s", grace.as_secs()))?;
        let _ = self.with_vm(id, |vm| {
            if vm.phase != FakePhase::Exited {
                vm.phase = FakePhase::Exited;
                vm.powered_off = !grace.is_zero();
                vm.vmm_exit = Some(if grace.is_zero() {
                    "signal: 9 (SIGKILL)".to_owned()
                } else {
                    "exit status: 0".to_owned()
                });
            }
        });
        Ok(())
    }

    fn console(&self, id: &str, offset: u64, max: usize) -> Result<ConsoleChunk, VmmError> {
        self.enter(Method::Console, id, format!("offset={offset}"))?;
        self.with_vm(id, |vm| {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(vm.console.len());
            let to = from.saturating_add(max).min(vm.console.len());
            ConsoleChunk {
                data: vm.console[from..to].to_vec(),
                next_offset: to as u64,
            }
        })
    }

    fn remove(&self, id: &str) -> Result<(), VmmError> {
        self.enter(Method::Remove, id, String::new())?;
        lock(&self.state).vms.remove(id);
        if self.root.is_some() {
            let dir = self.state_dir(id);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VmmError::State {
                        path: dir,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn pause(&self, id: &str) -> Result<(), VmmError> {
        self.enter(Method::Pause, id, String::new())?;
        self.with_vm(id, |vm| {
            if vm.phase == FakePhase::Running {
                vm.phase = FakePhase::Paused;
            }
        })
    }

    fn resume(&self, id: &str) -> Result<(), VmmError> {
        self.enter(Method::Resume, id, String::new())?;
        self.with_vm(id, |vm| {
            if vm.phase == FakePhase::Paused {
                vm.phase = FakePhase::Running;
            }
        })
    }

    fn snapshot(&self, id: &str, name: &str, leave_paused: bool) -> Result<SnapshotInfo, VmmError> {
        self.enter(
            Method::Snapshot,
            id,
            format!("{name} leave_paused={leave_paused}"),
        )?;
        let dir = self.state_dir(id).join("snapshots").join(name);
        let config = self.with_vm(id, |vm| {
            vm.snapshots.push(name.to_owned());
            if leave_paused && vm.phase == FakePhase::Running {
                vm.phase = FakePhase::Paused;
            }
            vm.config.clone()
        })?;
        let bytes = match &self.root {
            Some(_) => write_snapshot(&dir, name, &config)?,
            None => 4096,
        };
        Ok(SnapshotInfo {
            name: name.to_owned(),
            dir,
            bytes,
            created_unix_ms: 0,
            pause_ms: 1,
        })
    }

    fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        _timeout: Duration,
    ) -> Result<ExecOutput, VmmError> {
        self.enter(Method::Exec, id, argv.join(" "))?;
        self.with_vm(id, |_| ExecOutput {
            exit_code: 0,
            stdout: stdin.map(<[u8]>::to_vec).unwrap_or_default(),
            ..ExecOutput::default()
        })
    }

    fn invoke(
        &self,
        id: &str,
        _handler: &InvokeHandler,
        body: &[u8],
        _timeout: Duration,
    ) -> Result<InvokeOutput, VmmError> {
        self.enter(Method::Invoke, id, String::new())?;
        self.with_vm(id, |_| InvokeOutput {
            status: 200,
            body: body.to_vec(),
            ..InvokeOutput::default()
        })
    }

    fn io_stats(&self, id: &str) -> Result<crate::VmmIoStats, VmmError> {
        self.enter(Method::IoStats, id, String::new())?;
        self.with_vm(id, |_| crate::VmmIoStats::default())
    }

    fn restore(&self, cfg: &LaunchConfig, snapshot: &Path) -> Result<VmProcessInfo, VmmError> {
        self.enter(Method::Restore, &cfg.id, snapshot.display().to_string())?;
        self.start(cfg, Some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::image::Image;

    fn cfg(id: &str) -> LaunchConfig {
        LaunchConfig {
            id: id.to_owned(),
            vcpus: 1,
            memory_mib: 128,
            image: Image {
                digest: "sha256:0".into(),
                kernel: "/k".into(),
                initrd: "/i".into(),
                vmlinux: None,
            },
            cmd: None,
            accel: crate::Accel::Tcg,
            net: None,
            disks: Vec::new(),
        }
    }

    #[test]
    fn keeps_vms_through_their_life_and_records_each_call() {
        let root = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::with_state_root(root.path());
        assert!(matches!(rt.observe("a"), Err(VmmError::NotFound(_))));
        let info = rt.launch(&cfg("a")).unwrap();
        assert!(!info.already_running && info.state_dir.is_dir());
        assert!(rt.launch(&cfg("a")).unwrap().already_running);
        rt.pause("a").unwrap();
        assert!(rt.observe("a").unwrap().paused);
        rt.resume("a").unwrap();
        let snap = rt.snapshot("a", "s1", true).unwrap();
        assert_eq!(rt.vm("a").unwrap().phase, FakePhase::Paused);
        assert!(crate::completed_snapshot(&snap.dir).is_some());
        rt.stop("a", Duration::from_secs(10)).unwrap();
        let o = rt.observe("a").unwrap();
        assert!(!o.running && o.powered_off);
        assert_eq!(rt.list().unwrap(), vec!["a".to_owned()]);
        rt.remove("a").unwrap();
        rt.remove("a").unwrap();
        assert!(!info.state_dir.exists());
        assert_eq!(
            rt.actions("a"),
            [
                Method::Launch,
                Method::Launch,
                Method::Pause,
                Method::Resume,
                Method::Snapshot,
                Method::Stop,
                Method::Remove,
                Method::Remove
            ]
        );
        let stop = rt.calls().into_iter().find(|c| c.method == Method::Stop);
        assert_eq!(stop.unwrap().args, "grace=10s");
    }

    #[test]
    fn fails_once_where_told() {
        let rt = FakeRuntime::new();
        rt.fail("a", Method::Launch, VmmError::QemuNotFound);
        assert!(matches!(rt.launch(&cfg("a")), Err(VmmError::QemuNotFound)));
        assert!(rt.vm("a").is_none());
        // Other VMs, and the next call, are not affected.
        rt.launch(&cfg("b")).unwrap();
        rt.launch(&cfg("a")).unwrap();
    }

    #[test]
    fn hangs_where_told_until_released() {
        let rt = Arc::new(FakeRuntime::new());
        rt.launch(&cfg("a")).unwrap();
        let gate = rt.hang("a", Method::Stop);
        assert!(!gate.wait_reached(Duration::from_millis(10)));
        let stopper = {
            let rt = rt.clone();
            std::thread::spawn(move || rt.stop("a", Duration::ZERO))
        };
        assert!(gate.wait_reached(Duration::from_secs(10)));
        // Blocked before doing anything.
        assert_eq!(rt.vm("a").unwrap().phase, FakePhase::Running);
        gate.release();
        stopper.join().unwrap().unwrap();
        assert_eq!(rt.vm("a").unwrap().phase, FakePhase::Exited);

        // A crash there: the caller's thread ends, nothing was done.
        let gate = rt.hang("a", Method::Remove);
        let remover = {
            let rt = rt.clone();
            std::thread::spawn(move || rt.remove("a"))
        };
        assert!(gate.wait_reached(Duration::from_secs(10)));
        gate.crash();
        assert!(remover.join().is_err());
        assert!(rt.vm("a").is_some());
    }
}
