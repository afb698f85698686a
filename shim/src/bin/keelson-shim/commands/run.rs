//! `keelson-shim run`: create the container, detach, report readiness, then monitor it.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use keelson_shim::protocol::{self, ShimFile};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, pipe2};
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::container::{self, Stdio};
use crate::crilog::{CriLogWriter, FileSink, SystemClock};
use crate::detach::{self, ReadyPipe};
use crate::monitor::{Core, Monitor};
use crate::oom::OomCounter;
use crate::signals;

pub fn run(args: RunArgs) -> Result<()> {
    let ready = args.ready_fd.map(ReadyPipe::adopt).transpose()?;
    let prepared = prepare(&args);
    match prepared {
        Ok(monitor) => {
            if let Some(ready) = ready {
                ready.report(Ok(()));
            }
            monitor.run()?;
            Ok(())
        }
        Err(e) => {
            let e = if format!("{e:#}").contains(&args.id) {
                e
            } else {
                e.context(format!("container {}", args.id))
            };
            if let Some(ready) = ready {
                ready.report(Err(&format!("{e:#}")));
            }
            Err(e)
        }
    }
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("invalid {what} {}", path.display()))
}

/// Everything up to a created container with its monitor ready to run.
fn prepare(args: &RunArgs) -> Result<Monitor> {
    if args.tty {
        bail!("tty not supported yet");
    }
    let bundle = absolute(&args.bundle, "bundle")?;
    let state_dir = absolute(&args.state_dir, "state dir")?;
    let log_path = absolute(&args.log_path, "log path")?;
    let root = absolute(&args.libcontainer_root, "libcontainer root")?;
    for dir in [&state_dir, &root] {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let config_path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config_path)
        .map_err(|e| anyhow!("failed to load {}: {e}", config_path.display()))?;
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());

    detach::detach()?;
    signals::prepare_for_container()?;

    let socket_path = protocol::state_file(&state_dir, protocol::SOCKET_FILE);
    let listener = bind_socket(&socket_path)?;
    let created = create(
        args,
        &bundle,
        &state_dir,
        &log_path,
        &root,
        cgroups_path,
        listener,
    );
    if created.is_err() {
        let _ = fs::remove_file(&socket_path);
    }
    created
}

/// Create the container behind a bound socket and assemble its monitor.
fn create(
    args: &RunArgs,
    bundle: &Path,
    state_dir: &Path,
    log_path: &Path,
    root: &Path,
    cgroups_path: Option<PathBuf>,
    listener: UnixListener,
) -> Result<Monitor> {
    let log = FileSink::open(log_path)
        .with_context(|| format!("failed to open log {}", log_path.display()))?;

    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stdout pipe")?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stderr pipe")?;
    for fd in [&stdout_r, &stderr_r] {
        // Only the shim's read ends: the container keeps blocking writes.
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .context("failed to make a pipe non-blocking")?;
    }
    let (stdin, stdin_keep) = if args.stdin {
        // Interactive attach is not built yet: hold the write end open so the container's
        // reads block instead of seeing EOF.
        let (r, w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stdin pipe")?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").context("failed to open /dev/null")?;
        (OwnedFd::from(null), None)
    };

    let own_oom_score = fs::read_to_string("/proc/self/oom_score_adj").ok();
    let stdio = Stdio {
        stdin,
        stdout: stdout_w,
        stderr: stderr_w,
    };
    let container = container::create(&args.id, bundle, root, stdio)?;
    // build() wrote the container's oomScoreAdj into the shim's own score: put ours back (raising
    // is always allowed; lowering may need CAP_SYS_RESOURCE and then only warns).
    if let Some(score) = own_oom_score
        && let Err(e) = fs::write("/proc/self/oom_score_adj", score.trim())
    {
        warn!(id = %args.id, error = %e, "failed to restore the shim's oom_score_adj");
    }

    let finish = || -> Result<Monitor> {
        let init_pid = container
            .pid()
            .ok_or_else(|| anyhow!("libcontainer reported no init pid"))?
            .as_raw();
        let signal_fd = signals::block_into_signalfd(&[
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ])?;
        let shim_pid = std::process::id() as i32;
        protocol::write_shim_file(
            state_dir,
            &ShimFile {
                id: args.id.clone(),
                shim_pid,
                init_pid,
                shim_start_ticks: protocol::process_start_ticks(shim_pid),
                init_start_ticks: protocol::process_start_ticks(init_pid),
            },
        )?;
        let oom = OomCounter::for_container(cgroups_path.as_deref(), &args.id);
        info!(id = %args.id, shim_pid, init_pid, oom_counter = %oom.file().display(), "container created");
        let core = Core::new(
            args.id.clone(),
            state_dir.to_owned(),
            log_path.to_owned(),
            container.clone(),
            Pid::from_raw(init_pid),
            CriLogWriter::new(log, SystemClock),
            oom,
        );
        Ok(Monitor::new(
            core,
            listener,
            signal_fd,
            File::from(stdout_r),
            File::from(stderr_r),
            stdin_keep,
        ))
    };
    match finish() {
        Ok(monitor) => Ok(monitor),
        Err(e) => {
            // Do not leave a created container behind that nobody monitors.
            let mut container = container.clone();
            if let Err(del) = container.delete(true) {
                warn!(id = %args.id, error = %container::describe(&del), "failed to delete the container after a failed start");
            }
            Err(e)
        }
    }
}

/// Bind `<state-dir>/shim.sock` (mode 0600), replacing a stale socket but never a live shim's.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    match UnixStream::connect(path) {
        Ok(_) => bail!("a shim is already serving {}", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to remove stale {}", path.display()));
            }
        },
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("failed to bind {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to set the mode of {}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e: io::Error| anyhow!("failed to make {} non-blocking: {e}", path.display()))?;
    Ok(listener)
}
