//! The lines the guest prints on its console (`/dev/console` = ttyS0). The host parses the
//! captured console with [`parse_line`], so these strings are part of the guest's interface.

/// Printed once the guest is up (mounts done, modules loaded, channel opened).
pub const READY_LINE: &str = "firefleet-guest ready";
/// Prefix of the line printed when the workload exits, followed by the exit code.
pub const EXIT_STATUS_PREFIX: &str = "firefleet-guest exit-status ";
/// Printed right before the guest calls `reboot(RB_POWER_OFF)`.
pub const POWERING_OFF_LINE: &str = "firefleet-guest powering off";

/// A console line the host understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// [`READY_LINE`].
    Ready,
    /// [`EXIT_STATUS_PREFIX`] followed by a code.
    ExitStatus(i32),
    /// [`POWERING_OFF_LINE`].
    PoweringOff,
}

/// Classifies one console line (trailing `\r`/whitespace ignored). Lines that are not exactly one
/// of the guest's own lines return `None`, so workload output cannot easily fake them mid-line.
pub fn parse_line(line: &str) -> Option<ConsoleEvent> {
    let line = line.trim_end();
    if line == READY_LINE {
        return Some(ConsoleEvent::Ready);
    }
    if line == POWERING_OFF_LINE {
        return Some(ConsoleEvent::PoweringOff);
    }
    line.strip_prefix(EXIT_STATUS_PREFIX)
        .and_then(|rest| rest.trim().parse::<i32>().ok())
        .map(ConsoleEvent::ExitStatus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines() {
        assert_eq!(
            parse_line("firefleet-guest ready\r"),
            Some(ConsoleEvent::Ready)
        );
        assert_eq!(
            parse_line("firefleet-guest exit-status 3\r"),
            Some(ConsoleEvent::ExitStatus(3))
        );
        assert_eq!(
            parse_line("firefleet-guest powering off"),
            Some(ConsoleEvent::PoweringOff)
        );
        assert_eq!(parse_line("firefleet-guest exit-status x"), None);
        assert_eq!(parse_line("echo firefleet-guest ready"), None);
    }
}
