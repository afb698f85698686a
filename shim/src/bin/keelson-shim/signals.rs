//! Signal setup around libcontainer.
//!
//! libcontainer clones the container's processes straight from this process and execs the
//! workload without touching signal dispositions or the signal mask, so whatever this process
//! has when it calls `build()` is what the container starts with (`SIG_IGN` and blocked signals
//! survive `execve`; handlers are reset to the default). Hence:
//! - before `build()`: empty signal mask, `SIGPIPE` back to default (Rust's runtime ignores it),
//!   and SIGTERM/SIGINT/SIGHUP caught by a no-op *handler* (not `SIG_IGN`) so the shim survives
//!   them while the container still starts with defaults;
//! - after `build()`: the signals are blocked and read from a signalfd, `SIGPIPE` is ignored.

use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, sigaction,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Failures while setting up signal handling.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("failed to set the disposition of {signal}: {source}")]
    Disposition {
        signal: Signal,
        #[source]
        source: nix::Error,
    },
    #[error("failed to change the signal mask: {0}")]
    Mask(#[source] nix::Error),
    #[error("failed to create a signalfd: {0}")]
    SignalFd(#[source] nix::Error),
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn set_action(signal: Signal, handler: SigHandler) -> Result<(), SignalError> {
    let action = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler is either a default/ignore disposition or `ignore_signal`, which does
    // nothing and so is async-signal-safe; the process is single-threaded.
    unsafe { sigaction(signal, &action) }
        .map(drop)
        .map_err(|source| SignalError::Disposition { signal, source })
}

/// Prepare the process so that containers created from it start with default signal state,
/// while the process itself survives SIGTERM/SIGINT/SIGHUP.
pub fn prepare_for_container() -> Result<(), SignalError> {
    set_action(Signal::SIGPIPE, SigHandler::SigDfl)?;
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set_action(signal, SigHandler::Handler(ignore_signal))?;
    }
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(SignalError::Mask)
}

/// After the container's processes exist: block `signals`, deliver them through a
/// non-blocking signalfd and ignore SIGPIPE (writes to a closed socket return EPIPE).
pub fn block_into_signalfd(signals: &[Signal]) -> Result<SignalFd, SignalError> {
    let mut mask = SigSet::empty();
    for s in signals {
        mask.add(*s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(SignalError::Mask)?;
    set_action(Signal::SIGPIPE, SigHandler::SigIgn)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(SignalError::SignalFd)
}

/// Read every pending signal from `fd`; each signal is listed once.
pub fn drain(fd: &SignalFd) -> Vec<Signal> {
    let mut seen = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(signal) = Signal::try_from(info.ssi_signo as i32)
            && !seen.contains(&signal)
        {
            seen.push(signal);
        }
    }
    seen
}
