//! `keelson-shim run`: create the container, detach, report readiness, then monitor it.
//!
//! Stdio: without `--tty` the container gets pipes for stdout/stderr and either `/dev/null` or
//! (`--stdin`) a pipe whose write end the attach clients feed. With `--tty` libcontainer gives
//! it a terminal allocated inside the container and hands the master to the shim over a
//! console socket (`console`): output is the master's, stdin is written to it.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use keelson_shim::attach::ATTACH_SOCKET_FILE;
use keelson_shim::protocol::{self, ShimFile};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, pipe2};
use tracing::{info, warn};

use crate::attachers::{Attachers, StdinSink};
use crate::cli::RunArgs;
use crate::console::ConsoleSocket;
use crate::container::{self, InitIo, Stdio};
use crate::crilog::{CriLogWriter, FileSink, SystemClock};
use crate::detach::{self, ReadyPipe};
use crate::monitor::{Core, Monitor, Output};
use crate::oom::OomCounter;
use crate::signals;

/// libcontainer's console socket (`--tty`), in the state directory while the container is
/// created; removed once the terminal arrived. No longer than `shim.sock`, so that it fits in
/// a socket address wherever `shim.sock` does.
const CONSOLE_SOCKET_FILE: &str = "tty.sock";
const _: () = assert!(CONSOLE_SOCKET_FILE.len() <= protocol::SOCKET_FILE.len());
/// How long, after libcontainer's create returned, the terminal may take to arrive (it is
/// sent before the init reports ready, so it is normally already queued).
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);

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
    // libcontainer needs a console socket exactly when the spec asks for a terminal.
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if args.tty && !terminal {
        bail!(
            "--tty needs process.terminal true in {}",
            config_path.display()
        );
    }
    if terminal && !args.tty {
        bail!(
            "{} sets process.terminal but the shim was started without --tty",
            config_path.display()
        );
    }

    detach::detach()?;
    signals::prepare_for_container()?;

    let socket_path = protocol::state_file(&state_dir, protocol::SOCKET_FILE);
    let listener = bind_socket(&socket_path)?;
    let attach_path = protocol::state_file(&state_dir, ATTACH_SOCKET_FILE);
    let created = bind_socket(&attach_path).and_then(|attach| {
        create(
            args,
            &bundle,
            &state_dir,
            &log_path,
            &root,
            cgroups_path,
            Sockets {
                shim: listener,
                attach,
            },
        )
    });
    if created.is_err() {
        for path in [&socket_path, &attach_path] {
            let _ = fs::remove_file(path);
        }
    }
    created
}

/// The shim's listening sockets: requests (`shim.sock`) and attach clients (`attach.sock`).
struct Sockets {
    shim: UnixListener,
    attach: UnixListener,
}

/// The container's stdio before it is created.
enum Plumbing {
    Pipes {
        stdout: OwnedFd,
        stderr: OwnedFd,
        /// The write end of the stdin pipe (`--stdin`).
        stdin: Option<OwnedFd>,
    },
    /// The console socket, waiting for the terminal.
    Terminal(ConsoleSocket),
}

/// Pipes, or the console socket with `--tty`, and what libcontainer gets of them.
fn plumbing(args: &RunArgs, state_dir: &Path) -> Result<(InitIo, Plumbing)> {
    if args.tty {
        let path = protocol::state_file(state_dir, CONSOLE_SOCKET_FILE);
        let console = ConsoleSocket::new(bind_socket(&path)?, path.clone());
        return Ok((InitIo::Console(path), Plumbing::Terminal(console)));
    }
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stdout pipe")?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stderr pipe")?;
    for fd in [&stdout_r, &stderr_r] {
        // Only the shim's read ends: the container keeps blocking writes.
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .context("failed to make a pipe non-blocking")?;
    }
    let (stdin, stdin_w) = if args.stdin {
        // The write end stays open (the container's reads block rather than see EOF) until a
        // stdin-once attach client closes it; attach clients' stdin is written to it.
        let (r, w) = pipe2(OFlag::O_CLOEXEC).context("failed to create stdin pipe")?;
        fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .context("failed to make the stdin pipe non-blocking")?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").context("failed to open /dev/null")?;
        (OwnedFd::from(null), None)
    };
    let io = InitIo::Stdio(Stdio {
        stdin,
        stdout: stdout_w,
        stderr: stderr_w,
    });
    Ok((
        io,
        Plumbing::Pipes {
            stdout: stdout_r,
            stderr: stderr_r,
            stdin: stdin_w,
        },
    ))
}

/// Once the container exists: where its output is read and its stdin written.
fn connect_io(
    args: &RunArgs,
    plumbing: Plumbing,
    attach_listener: UnixListener,
) -> Result<(Output, Attachers)> {
    match plumbing {
        Plumbing::Pipes {
            stdout,
            stderr,
            stdin,
        } => Ok((
            Output::Pipes {
                stdout: File::from(stdout),
                stderr: File::from(stderr),
            },
            Attachers::new(
                args.id.clone(),
                attach_listener,
                stdin.map(|w| StdinSink::new(w, false)),
                args.stdin_once,
                None,
            ),
        )),
        Plumbing::Terminal(console) => {
            let master = console.receive_master(CONSOLE_TIMEOUT)?;
            drop(console);
            let dup = |what: &str| {
                master
                    .try_clone()
                    .with_context(|| format!("failed to duplicate the terminal for {what}"))
            };
            let stdin = if args.stdin {
                Some(StdinSink::new(dup("stdin")?, true))
            } else {
                None
            };
            let resize = dup("resizes")?;
            Ok((
                Output::Terminal(File::from(master)),
                Attachers::new(
                    args.id.clone(),
                    attach_listener,
                    stdin,
                    args.stdin_once,
                    Some(resize),
                ),
            ))
        }
    }
}

/// Create the container behind a bound socket and assemble its monitor.
fn create(
    args: &RunArgs,
    bundle: &Path,
    state_dir: &Path,
    log_path: &Path,
    root: &Path,
    cgroups_path: Option<PathBuf>,
    sockets: Sockets,
) -> Result<Monitor> {
    let log = FileSink::open(log_path)
        .with_context(|| format!("failed to open log {}", log_path.display()))?;

    let (init_io, plumbing) = plumbing(args, state_dir)?;
    let own_oom_score = fs::read_to_string("/proc/self/oom_score_adj").ok();
    if args.systemd_cgroup
        && let Some(problem) = container::systemd_driver_problem(
            &container::SystemdHost::real(),
            cgroups_path.as_deref(),
        )
    {
        return Err(container::ContainerError {
            action: "create",
            id: args.id.clone(),
            detail: problem,
        }
        .into());
    }
    let container = container::create(&args.id, bundle, root, init_io, args.systemd_cgroup)?;
    // build() wrote the container's oomScoreAdj into the shim's own score: put ours back (raising
    // is always allowed; lowering may need CAP_SYS_RESOURCE and then only warns).
    if let Some(score) = own_oom_score
        && let Err(e) = fs::write("/proc/self/oom_score_adj", score.trim())
    {
        warn!(id = %args.id, error = %e, "failed to restore the shim's oom_score_adj");
    }

    let finish = || -> Result<Monitor> {
        let (output, attachers) = connect_io(args, plumbing, sockets.attach)?;
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
        let oom = OomCounter::for_container(cgroups_path.as_deref(), &args.id, args.systemd_cgroup);
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
            sockets.shim,
            signal_fd,
            output,
            attachers,
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
