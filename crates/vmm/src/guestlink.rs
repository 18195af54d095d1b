//! A VM's guest channel as a runtime reaches it: the backend's shared [`Channels`] and the VM's
//! key in them, with errors that name the VM. [`crate::Runtime::exec`], `invoke` and
//! `telemetry` go through it.

use std::time::Duration;

use crate::channel::mux::Channels;
use crate::channel::{ChannelError, ExecOutput, GuestTelemetry, InvokeHandler, InvokeOutput};
use crate::error::VmmError;

/// How long a guest may take to gather its telemetry (a guest under attack, e.g. thousands of
/// processes, is slow to list them: that is when its answer matters most).
pub const TELEMETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// One VM's guest channel in a backend's [`Channels`].
#[derive(Debug)]
pub struct GuestLink<'a> {
    channels: &'a Channels,
    key: String,
    id: String,
}

impl<'a> GuestLink<'a> {
    /// VM `id`'s channel, found under `key` in `channels` (which the backend has set up).
    pub fn new(channels: &'a Channels, key: impl Into<String>, id: &str) -> Self {
        Self {
            channels,
            key: key.into(),
            id: id.to_string(),
        }
    }

    fn err(&self) -> impl FnOnce(ChannelError) -> VmmError + '_ {
        move |source| VmmError::Channel {
            id: self.id.clone(),
            source,
        }
    }

    /// Runs `argv` in the guest (killed after `timeout`), with `stdin` as its input if given.
    pub fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, VmmError> {
        self.channels
            .exec(&self.key, argv, stdin, timeout)
            .map_err(self.err())
    }

    /// One invocation of `handler` with `body`, stopped after `timeout`.
    pub fn invoke(
        &self,
        handler: &InvokeHandler,
        body: &[u8],
        timeout: Duration,
    ) -> Result<InvokeOutput, VmmError> {
        self.channels
            .invoke(&self.key, handler, body, timeout)
            .map_err(self.err())
    }

    /// The guest's telemetry, waiting up to [`TELEMETRY_TIMEOUT`].
    pub fn telemetry(&self) -> Result<GuestTelemetry, VmmError> {
        self.channels
            .telemetry(&self.key, TELEMETRY_TIMEOUT)
            .map_err(self.err())
    }

    /// A round trip to the guest agent, waiting up to `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, VmmError> {
        self.channels.ping(&self.key, timeout).map_err(self.err())
    }
}
