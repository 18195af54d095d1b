//! The QEMU guest channel: one persistent connection per VM to `guest.sock`, shared by every
//! runtime of this process (QEMU's chardev takes one client at a time).

use std::time::Duration;

use super::cmdline::GUEST_SOCK;
use super::QemuRuntime;
use crate::channel::mux::{ChannelStatus, Channels};
use crate::channel::GuestChannel;
use crate::error::VmmError;
use crate::guestlink::GuestLink;
use crate::statedir;

/// How long to wait for QEMU's guest channel socket to accept a connection.
const CHANNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `telemetry` and `ping` wait for the guest's answer.
const CHANNEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest channels of the VMs of every QEMU runtime of this process, keyed by socket path: a
/// runtime is cheap to create and several may drive one VM, but QEMU serves one client at a
/// time, so they must share one connection.
pub(super) fn qemu_channels() -> &'static Channels {
    static CHANNELS: std::sync::OnceLock<Channels> = std::sync::OnceLock::new();
    CHANNELS.get_or_init(Channels::default)
}

impl QemuRuntime {
    /// The key of the VM's channel in [`qemu_channels`] (its socket path).
    pub(super) fn channel_key(&self, id: &str) -> String {
        self.vm_dir(id)
            .join(GUEST_SOCK)
            .to_string_lossy()
            .into_owned()
    }

    /// The VM's channel, set up (not connected yet) if it was not.
    pub(super) fn channel(&self, id: &str) -> Result<String, VmmError> {
        let dir = statedir::existing_vm_dir(&self.state_root, id)?;
        let key = self.channel_key(id);
        qemu_channels().ensure_connect(&key, &dir.join(GUEST_SOCK));
        Ok(key)
    }

    pub(super) fn channel_err(
        id: &str,
    ) -> impl FnOnce(crate::channel::ChannelError) -> VmmError + '_ {
        move |source| VmmError::Channel {
            id: id.to_owned(),
            source,
        }
    }

    /// An exclusive connection to the VM's guest channel (`guest.sock`), for tools that drive
    /// the channel themselves. QEMU serves one client at a time: the runtime's own shared
    /// connection is closed first (requests in flight on it fail as closed), and the runtime's
    /// requests wait until the returned channel is dropped. Prefer [`Runtime::exec`],
    /// [`Runtime::invoke`], [`Runtime::telemetry`] and [`QemuRuntime::ping`].
    pub fn guest_channel(&self, id: &str) -> Result<GuestChannel, VmmError> {
        let dir = statedir::existing_vm_dir(&self.state_root, id)?;
        qemu_channels().close(&self.channel_key(id));
        GuestChannel::connect(&dir.join(GUEST_SOCK), CHANNEL_CONNECT_TIMEOUT)
            .map_err(Self::channel_err(id))
    }

    /// Round trip to the guest agent over the shared channel.
    pub fn ping(&self, id: &str) -> Result<Duration, VmmError> {
        GuestLink::new(qemu_channels(), self.channel(id)?, id).ping(CHANNEL_ANSWER_TIMEOUT)
    }

    /// The state of the VM's shared guest channel in this process (all zero before its first
    /// use).
    pub fn channel_status(&self, id: &str) -> ChannelStatus {
        qemu_channels().status(&self.channel_key(id))
    }
}
