//! The pod's shared PID namespace (`shareProcessNamespace`): a namespace needs a living init,
//! so a pod that asks for one gets a tiny holder process, `keelson-runtime pod-init`, as PID 1.
//!
//! The holder runs detached (own session, reparented to the host's init), so a runtime restart
//! never touches it; it reaps the orphans of the pod's containers and exits 0 on SIGTERM.
//! Containers join it through `/proc/<holder pid>/ns/pid`.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What went wrong with a pod's PID namespace holder.
#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("cannot start the pod pid namespace holder: {0}")]
    Start(String),
}

/// The holder as recorded: host pid and start time (so a reused pid is never killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidHolder {
    pub pid: i32,
    pub start_ticks: u64,
}

impl PidHolder {
    /// The namespace file containers join.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    /// Whether the recorded process is still the holder (same pid *and* start time).
    pub fn alive(&self) -> bool {
        keelson_shim::protocol::process_start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Starting and stopping holders; faked in unit tests.
pub trait PidNsOps: Send + Sync {
    /// Sandbox ids of this runtime's running holders.
    fn running(&self) -> Vec<String>;
    /// Starts the holder of `sandbox_id`'s PID namespace.
    fn start(&self, sandbox_id: &str) -> Result<PidHolder, PidNsError>;
    fn stop(&self, holder: &PidHolder);
    /// Kills holders of `sandbox_id` that no record names (a crash between start and record).
    fn stop_orphans(&self, sandbox_id: &str);
}

/// `(pid, sandbox id)` of every `pod-init` process started by the runtime owning `state`
/// (its command line is `... pod-init <sandbox id> <state>`; other runtimes' holders differ).
pub fn holders(state: &Path) -> Vec<(i32, String)> {
    let state = state.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let at = args.iter().position(|a| a == "pod-init")?;
            (args.get(at + 2) == Some(&state))
                .then(|| (pid, args.get(at + 1).cloned().unwrap_or_default()))
        })
        .collect()
}

/// Runs `<this executable> pod-init <sandbox id> <state>`.
pub struct ProcessPidNs {
    pub binary: PathBuf,
    /// The runtime's `--state`, so each runtime finds only its own holders.
    pub state: PathBuf,
}

impl PidNsOps for ProcessPidNs {
    fn running(&self) -> Vec<String> {
        holders(&self.state).into_iter().map(|(_, id)| id).collect()
    }

    fn start(&self, sandbox_id: &str) -> Result<PidHolder, PidNsError> {
        let err = |m: String| PidNsError::Start(m);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("pod-init")
            .arg(sandbox_id)
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: runs in the forked child before exec; setsid(2) and unshare(2) are
        // async-signal-safe system calls and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("{}: {e}", self.binary.display())))?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
        let _ = child.wait();
        read.map_err(|e| err(format!("reading its pid: {e}")))?;
        let pid: i32 = line
            .trim()
            .parse()
            .map_err(|_| err(format!("unexpected answer {line:?}")))?;
        let start_ticks = keelson_shim::protocol::process_start_ticks(pid)
            .ok_or_else(|| err(format!("holder {pid} exited at once")))?;
        Ok(PidHolder { pid, start_ticks })
    }

    fn stop(&self, holder: &PidHolder) {
        if holder.alive() {
            // SIGKILL: the namespace's processes die with their init, as in a pod whose pause exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(holder.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn stop_orphans(&self, sandbox_id: &str) {
        for (pid, _) in holders(&self.state)
            .into_iter()
            .filter(|(_, id)| id == sandbox_id)
        {
            tracing::warn!(
                sandbox = sandbox_id,
                pid,
                "killing an unrecorded pod pid namespace holder"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `keelson-runtime pod-init SANDBOX_ID`: started in a fresh PID namespace (its own pid is outside it), it
/// forks the namespace's PID 1, prints that child's host pid and exits. The child waits for
/// signals: it reaps every exited child and leaves on SIGTERM/SIGINT.
pub fn pod_init_main() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{WaitPidFlag, waitpid};
    use nix::unistd::{ForkResult, fork};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    // Block them before forking, so none is lost between fork and sigwait.
    if set.thread_block().is_err() {
        std::process::exit(1);
    }
    // SAFETY: this process is single-threaded (a fresh exec of this binary that has started no
    // threads), so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            println!("{child}");
            std::process::exit(0);
        }
        Ok(ForkResult::Child) => {}
        Err(_) => std::process::exit(1),
    }
    // Close everything inherited; this process lives as long as the pod.
    for fd in 0..3 {
        let _ = nix::unistd::close(fd);
    }
    let _ = std::env::set_current_dir(Path::new("/"));
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => std::process::exit(0),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_or_reused_pids_are_not_alive() {
        let me = std::process::id() as i32;
        let ticks = keelson_shim::protocol::process_start_ticks(me).unwrap();
        assert!(
            PidHolder {
                pid: me,
                start_ticks: ticks
            }
            .alive()
        );
        assert!(
            !PidHolder {
                pid: me,
                start_ticks: ticks + 1
            }
            .alive(),
            "a reused pid has another start time"
        );
        assert_eq!(
            PidHolder {
                pid: 42,
                start_ticks: 0
            }
            .ns_path(),
            PathBuf::from("/proc/42/ns/pid")
        );
    }
}
