//! The process `keelson-shim exec` runs: a fresh process joined to a running container's init
//! and given the container's process settings, then `execve`d.
//!
//! libcontainer 0.7's `TenantContainerBuilder` rebuilds the spec's `linux` section without
//! `seccomp`, so the processes it started ran unfiltered (`Seccomp: 0`) next to a filtered init;
//! runc applies the container's profile to `runc exec`, and critest checks it through ExecSync.
//! None of the builder's hooks can put it back: its executor runs after the capabilities are
//! dropped, too late to load a filter without `no_new_privs`. So the shim does it itself:
//!
//! 1. [`prepare`], before any fork: libcontainer's state (the container must be running), the
//!    bundle's `config.json` (the file the init was created from, already in libcontainer's
//!    reading: seccomp argument order, `noNewPrivileges`), a pidfd and the namespace files of the
//!    init that differ from the shim's, the init's cgroup directories; then a check that the init
//!    is still the container's (inside its `cgroupsPath`, alive after the files were opened).
//! 2. [`spawn`]: an intermediate child sets `oomScoreAdj` and the rlimits, joins the cgroups
//!    (every hierarchy listed in `/proc/<init>/cgroup`), `setns`es into the namespaces (user
//!    first, mount last) and forks, so that the pid and time namespaces apply; it reports the
//!    grandchild's pid and exits. The shim is a child subreaper: the grandchild becomes its child.
//! 3. The grandchild follows libcontainer's init order: with `--console-socket-fd`, a pty
//!    from the container's `/dev/ptmx` whose master goes out over that socket (as runc's exec
//!    with a console socket: the terminal is the container's, so `tty` names a `/dev/pts/N`
//!    there); a new session (with `--tty`, the terminal, that pty's slave or else its stdin,
//!    becomes the session's controlling terminal), `no_new_privs` when the spec
//!    says true, personality, AppArmor, umask, cwd, supplementary groups, gid and uid (keeping the
//!    capabilities), the seccomp filter *before* the capabilities are dropped when
//!    `noNewPrivileges` is not true (loading one without `no_new_privs` needs CAP_SYS_ADMIN), the
//!    capability sets, the filter last when it is true, stdio, and `execve` with the container's
//!    environment plus the overrides.
//!
//! A failure in either child comes back as one line on a close-on-exec pipe; end of file without
//! one means the command is running.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use libcontainer::container::ContainerStatus;
use libcontainer::syscall::syscall::create_syscall;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    AccessFlags, ForkResult, Gid, Pid, Uid, access, chdir, execve, fork, getpid, pipe2, setgroups,
    setresgid, setresuid, setsid,
};
use oci_spec::runtime::{
    LinuxCapabilities, LinuxPersonalityDomain, LinuxSeccomp, PosixRlimit, Spec,
};
use tracing::debug;

use crate::cli::ExecArgs;
use crate::container::{self, ContainerError, chain};
use crate::{console, oom, procinfo};

/// `/etc/passwd` larger than this is not read for `HOME`.
const MAX_PASSWD: u64 = 4 * 1024 * 1024;

/// `personality(2)` domains (`<linux/personality.h>`).
const PER_LINUX: libc::c_ulong = 0x0000;
const PER_LINUX32: libc::c_ulong = 0x0008;

/// Namespace types in the order they are joined: the user namespace first (it grants the
/// capabilities the other joins need), the mount namespace last (it changes root and cwd).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
    ("mnt", libc::CLONE_NEWNS),
];

/// Failures of an exec before the command runs.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("container {id} is not running (status: {status})")]
    NotRunning { id: String, status: String },
    #[error("the init process {pid} of container {id} is gone")]
    InitGone { id: String, pid: i32 },
    #[error("failed to load the spec of container {id} from {path}: {detail}")]
    Spec {
        id: String,
        path: PathBuf,
        detail: String,
    },
    #[error("invalid exec in container {id}: {reason}")]
    Invalid { id: String, reason: String },
    #[error("container {id} uses {what}, which exec does not support")]
    Unsupported { id: String, what: &'static str },
    #[error("failed to inspect the init process {pid} of container {id}: {what}: {source}")]
    Inspect {
        id: String,
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to start a process in container {id}: {step}: {source}")]
    Spawn {
        id: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    /// Reported by the intermediate process or the exec'd process before `execve` succeeded.
    #[error("failed to exec in container {id}: {message}")]
    Setup { id: String, message: String },
}

/// The container's process settings an exec'd process gets (with the request's overrides).
struct Settings {
    program: String,
    args: Vec<CString>,
    env: Vec<String>,
    cwd: PathBuf,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    umask: Option<Mode>,
    capabilities: Option<LinuxCapabilities>,
    no_new_privileges: bool,
    seccomp: Option<LinuxSeccomp>,
    rlimits: Vec<PosixRlimit>,
    apparmor: Option<String>,
    personality: Option<libc::c_ulong>,
    oom_score_adj: Option<i32>,
    /// Make stdin (a terminal) the controlling terminal of the process's new session.
    tty: bool,
}

/// One of the init's namespaces, open.
struct Namespace {
    name: &'static str,
    flag: CloneFlags,
    file: File,
}

/// Everything an exec needs, gathered before any fork.
pub struct Prepared {
    id: String,
    init_pid: i32,
    settings: Settings,
    /// The init's namespaces that differ from the shim's, in join order.
    namespaces: Vec<Namespace>,
    /// `cgroup.procs` of every cgroup of the init's that the shim is not in.
    cgroup_procs: Vec<PathBuf>,
}

/// The exec'd process's standard streams.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the exec'd process's fds 0-2 become.
pub enum ExecIo {
    /// These descriptors (with `tty`, stdin is a terminal: the controlling terminal).
    Stdio(Stdio),
    /// The slave of a pty allocated in the container, whose master is sent over this
    /// connected unix socket first.
    Console(OwnedFd),
}

fn settings(id: &str, spec: &Spec, args: &ExecArgs) -> Result<Settings, TenantError> {
    let invalid = |reason: String| TenantError::Invalid {
        id: id.to_owned(),
        reason,
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("the container's spec has no process".into()))?;
    let program = args
        .command
        .first()
        .cloned()
        .ok_or_else(|| invalid("no command".into()))?;
    let cstring = |s: &str| CString::new(s).map_err(|_| invalid(format!("NUL byte in {s:?}")));
    let argv = args
        .command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = procinfo::merge_env(process.env().as_deref().unwrap_or_default(), &args.env);
    for e in &env {
        cstring(e)?;
    }
    let cwd = args.cwd.clone().unwrap_or_else(|| process.cwd().clone());
    if !cwd.is_absolute() {
        return Err(invalid(format!(
            "the working directory {} is not absolute",
            cwd.display()
        )));
    }
    let user = process.user();
    let umask = user
        .umask()
        .map(|m| Mode::from_bits(m).ok_or_else(|| invalid(format!("invalid umask {m:o}"))))
        .transpose()?;
    let linux = spec.linux().as_ref();
    let seccomp = linux.and_then(|l| l.seccomp().clone());
    if seccomp
        .as_ref()
        .is_some_and(libcontainer::seccomp::is_notify)
    {
        return Err(TenantError::Unsupported {
            id: id.to_owned(),
            what: "a seccomp notify action",
        });
    }
    let personality = match linux.and_then(|l| l.personality().as_ref()) {
        None => None,
        Some(p) if p.flags().as_ref().is_some_and(|f| !f.is_empty()) => {
            return Err(TenantError::Unsupported {
                id: id.to_owned(),
                what: "personality flags",
            });
        }
        Some(p) => Some(match p.domain() {
            LinuxPersonalityDomain::PerLinux => PER_LINUX,
            LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
        }),
    };
    Ok(Settings {
        program,
        args: argv,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask,
        capabilities: process.capabilities().clone(),
        no_new_privileges: process.no_new_privileges() == Some(true),
        seccomp,
        rlimits: process.rlimits().clone().unwrap_or_default(),
        apparmor: process.apparmor_profile().clone().filter(|p| !p.is_empty()),
        personality,
        oom_score_adj: process.oom_score_adj(),
        tty: args.tty,
    })
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Load the container's state and spec and open what joining its init takes.
pub fn prepare(args: &ExecArgs, root: &Path) -> Result<Prepared, TenantError> {
    let id = args.id.as_str();
    let container = container::load(root, id)?;
    let not_running = |status: ContainerStatus| TenantError::NotRunning {
        id: id.to_owned(),
        status: status.to_string().to_lowercase(),
    };
    if container.status() != ContainerStatus::Running {
        return Err(not_running(container.status()));
    }
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| not_running(ContainerStatus::Stopped))?;
    let gone = || TenantError::InitGone {
        id: id.to_owned(),
        pid,
    };
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| TenantError::Spec {
        id: id.to_owned(),
        path: config.clone(),
        detail: chain(&e),
    })?;
    let settings = settings(id, &spec, args)?;

    let pidfd = pidfd_open(pid).map_err(|_| gone())?;
    let inspect = |what: String, source: io::Error| TenantError::Inspect {
        id: id.to_owned(),
        pid,
        what,
        source,
    };
    let init_cgroups = procinfo::parse_proc_cgroup(
        &fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|_| gone())?,
    );
    // A pid reused by an unrelated process would not be inside the container's cgroup.
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let literal = oom::container_cgroup(cgroups_path.as_deref(), id);
    if !procinfo::in_container_cgroup(&init_cgroups, &literal, cgroups_path.as_deref()) {
        return Err(gone());
    }
    let shim_cgroups = procinfo::parse_proc_cgroup(
        &fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| inspect("reading /proc/self/cgroup".into(), e))?,
    );
    let mounts = procinfo::parse_cgroup_mounts(
        &fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| inspect("reading /proc/self/mountinfo".into(), e))?,
    );
    let mut cgroup_procs = Vec::new();
    for entry in init_cgroups.iter().filter(|e| !shim_cgroups.contains(e)) {
        match procinfo::cgroup_dir(entry, &mounts) {
            Some(dir) => cgroup_procs.push(dir.join("cgroup.procs")),
            None => debug!(id, hierarchy = %entry.hierarchy, "cgroup hierarchy not mounted"),
        }
    }

    let mut namespaces = Vec::new();
    for &(name, flag) in NAMESPACES {
        let file = match File::open(format!("/proc/{pid}/ns/{name}")) {
            Ok(f) => f,
            // A namespace type this kernel lacks (or the init is gone: checked below).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(inspect(format!("opening its {name} namespace"), e)),
        };
        let theirs = file
            .metadata()
            .map_err(|e| inspect(format!("reading its {name} namespace"), e))?;
        let ours = fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(|e| inspect(format!("reading the shim's {name} namespace"), e))?;
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            namespaces.push(Namespace {
                name,
                flag: CloneFlags::from_bits_retain(flag),
                file,
            });
        }
    }
    // Alive after the opens: the files are the init's, not a reused pid's.
    if exited(&pidfd) {
        return Err(gone());
    }
    Ok(Prepared {
        id: id.to_owned(),
        init_pid: pid,
        settings,
        namespaces,
        cgroup_procs,
    })
}

/// Longest report line: below PIPE_BUF, so the two writers' lines never interleave.
const MAX_REPORT: usize = 2048;

/// One report line to the shim: `pid N` or `error MESSAGE`, written at once.
fn send(report: &OwnedFd, kind: &str, text: &str) {
    let mut text = text.replace('\n', " ");
    if text.len() > MAX_REPORT {
        let mut end = MAX_REPORT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let line = format!("{kind} {text}\n");
    let _ = nix::unistd::write(report, line.as_bytes());
}

/// Start the exec'd process; returns its pid (a child of this process) once it has called
/// `execve`.
pub fn spawn(prepared: Prepared, io: ExecIo) -> Result<Pid, TenantError> {
    let id = prepared.id.clone();
    let spawn_err = |step: &'static str, source: nix::Error| TenantError::Spawn {
        id: id.clone(),
        step,
        source,
    };
    let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err("pipe", e))?;
    // The grandchild is reparented here when the intermediate process exits.
    prctl::set_child_subreaper(true).map_err(|e| spawn_err("becoming a subreaper", e))?;
    // Until it executes the command, the process in the container is not dumpable: processes
    // already in the container cannot ptrace it or open its /proc files (like runc's init).
    prctl::set_dumpable(false).map_err(|e| spawn_err("making the shim non-dumpable", e))?;
    // SAFETY: the shim is single-threaded (it never starts a thread), so the child may run any
    // code; it ends with `_exit` and never returns into the caller.
    let intermediate = match unsafe { fork() }.map_err(|e| spawn_err("fork", e))? {
        ForkResult::Child => {
            drop(report_r);
            let code = catch_unwind(AssertUnwindSafe(|| {
                run_intermediate(&prepared, io, report_w)
            }))
            .unwrap_or(1);
            // SAFETY: ends this forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    // The command holds the only copies of its streams (or the console socket) from now on.
    drop(io);
    drop(report_w);

    // End of file once the intermediate process exited and the command was executed (or
    // the grandchild failed).
    let mut report = String::new();
    let read = File::from(report_r).read_to_string(&mut report);
    let status = loop {
        match waitpid(intermediate, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    let mut grandchild = None;
    let mut failure = None;
    for line in report.lines() {
        match line.split_once(' ') {
            Some(("pid", n)) => grandchild = n.parse::<i32>().ok().map(Pid::from_raw),
            Some(("error", message)) => {
                failure.get_or_insert_with(|| message.to_owned());
            }
            _ => {}
        }
    }
    if failure.is_none() {
        if let Err(e) = read {
            failure = Some(format!("reading the start report: {e}"));
        } else if !matches!(status, Ok(WaitStatus::Exited(_, 0))) || grandchild.is_none() {
            failure = Some(format!("the intermediate process ended with {status:?}"));
        }
    }
    match (failure, grandchild) {
        (None, Some(pid)) => Ok(pid),
        (failure, grandchild) => {
            if let Some(pid) = grandchild {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            Err(TenantError::Setup {
                id,
                message: failure.unwrap_or_default(),
            })
        }
    }
}

/// The intermediate process: join, fork the grandchild, report its pid. Returns the exit code.
fn run_intermediate(p: &Prepared, io: ExecIo, report: OwnedFd) -> i32 {
    if let Err(message) = join(p) {
        send(&report, "error", &message);
        return 1;
    }
    // SAFETY: single-threaded (see `spawn`); the child ends with `execve` or `_exit`.
    match unsafe { fork() } {
        Err(e) => {
            send(
                &report,
                "error",
                &format!("failed to fork in the container's namespaces: {e}"),
            );
            1
        }
        Ok(ForkResult::Child) => {
            let message = match catch_unwind(AssertUnwindSafe(|| exec_workload(&p.settings, io))) {
                Ok(Err(message)) => message,
                Err(_) => "the exec process panicked".to_owned(),
            };
            send(&report, "error", &message);
            // SAFETY: ends this forked child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        Ok(ForkResult::Parent { child }) => {
            send(&report, "pid", &child.as_raw().to_string());
            0
        }
    }
}

/// In the intermediate process: the init's oom score, rlimits, cgroups and namespaces.
fn join(p: &Prepared) -> Result<(), String> {
    let s = &p.settings;
    if let Some(adj) = s.oom_score_adj {
        // As for the init, a value the shim may not set (lower than its own) is not fatal.
        if let Err(e) = fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            debug!(adj, error = %e, "cannot set oom_score_adj");
        }
    }
    let syscall = create_syscall();
    for rlimit in &s.rlimits {
        syscall
            .set_rlimit(rlimit)
            .map_err(|e| format!("failed to set rlimit {}: {}", rlimit.typ(), chain(&e)))?;
    }
    let me = getpid().as_raw().to_string();
    for procs in &p.cgroup_procs {
        fs::write(procs, &me)
            .map_err(|e| format!("failed to join the cgroup {}: {e}", procs.display()))?;
    }
    for ns in &p.namespaces {
        setns(&ns.file, ns.flag).map_err(|e| {
            format!(
                "failed to join the {} namespace of process {}: {e}",
                ns.name, p.init_pid
            )
        })?;
    }
    Ok(())
}

/// `HOME` of `uid` from the container's `/etc/passwd` (the mount namespace is the container's
/// by now). A FIFO or device there is not read.
fn home_of(uid: u32) -> Option<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/etc/passwd")
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_PASSWD)
        .read_to_string(&mut text)
        .ok()?;
    procinfo::home_of(&text, uid)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file()) && access(path, AccessFlags::X_OK).is_ok()
}

/// setresgid + setresuid, keeping the permitted capabilities across the uid change and making
/// them effective again (a filter may still have to be loaded with CAP_SYS_ADMIN).
fn set_ids(uid: u32, gid: u32) -> Result<(), String> {
    let syscall = create_syscall();
    prctl::set_keepcaps(true).map_err(|e| format!("failed to keep capabilities: {e}"))?;
    let gid = Gid::from_raw(gid);
    setresgid(gid, gid, gid).map_err(|e| format!("failed to set gid {gid}: {e}"))?;
    let uid = Uid::from_raw(uid);
    setresuid(uid, uid, uid).map_err(|e| format!("failed to set uid {uid}: {e}"))?;
    libcontainer::capabilities::reset_effective(&*syscall)
        .map_err(|e| format!("failed to reset the effective capabilities: {}", chain(&e)))?;
    prctl::set_keepcaps(false).map_err(|e| format!("failed to reset keepcaps: {e}"))
}

fn load_seccomp(profile: Option<&LinuxSeccomp>) -> Result<(), String> {
    let Some(profile) = profile else {
        return Ok(());
    };
    let notify = libcontainer::seccomp::initialize_seccomp(profile)
        .map_err(|e| format!("failed to load the seccomp profile: {}", chain(&e)))?;
    if let Some(fd) = notify {
        // SAFETY: libseccomp handed over this descriptor; notify profiles are refused earlier,
        // so nobody else will use it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(())
}

/// In the grandchild, in the container's mount namespace and still privileged: a pty from the
/// container's `/dev/ptmx`, its master sent over `socket` (which is closed then), a new session
/// with the slave as its controlling terminal. Returns the slave as the process's stdio.
fn container_terminal(socket: OwnedFd, uid: u32) -> Result<Stdio, String> {
    let terminal = console::open_exec_terminal(Path::new("/dev/ptmx"))
        .map_err(|e| format!("failed to allocate a terminal in the container: {e}"))?;
    // The terminal belongs to the process's user, as runc's `fixStdioPermissions` makes it
    // (reopening it by name then works). Best effort: a uid the user namespace does not map
    // cannot own it, and the open descriptors work regardless.
    let _ = nix::unistd::fchown(&terminal.slave, Some(Uid::from_raw(uid)), None);
    console::send_master(socket.as_fd(), &terminal).map_err(|e| e.to_string())?;
    drop(socket);
    let console::ExecTerminal { master, slave, .. } = terminal;
    // Only the receiver holds the master now: it sees end of file once the slave is gone.
    drop(master);
    setsid().map_err(|e| format!("failed to start a session: {e}"))?;
    console::set_controlling_terminal(slave.as_fd())
        .map_err(|e| format!("failed to make the terminal the controlling terminal: {e}"))?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| format!("failed to duplicate the terminal: {e}"))
    };
    Ok(Stdio {
        stdin: dup(&slave)?,
        stdout: dup(&slave)?,
        stderr: slave,
    })
}

/// In the grandchild, inside the container's namespaces: apply the settings and execute the
/// command. Returns only on failure.
fn exec_workload(s: &Settings, io: ExecIo) -> Result<Infallible, String> {
    let stdio = match io {
        ExecIo::Stdio(stdio) => {
            setsid().map_err(|e| format!("failed to start a session: {e}"))?;
            if s.tty {
                console::set_controlling_terminal(stdio.stdin.as_fd())
                    .map_err(|e| format!("failed to make stdin the controlling terminal: {e}"))?;
            }
            stdio
        }
        ExecIo::Console(socket) => container_terminal(socket, s.uid)?,
    };
    if s.no_new_privileges {
        prctl::set_no_new_privs().map_err(|e| format!("failed to set no_new_privs: {e}"))?;
    }
    if let Some(persona) = s.personality {
        // SAFETY: personality(2) only changes this process's execution domain.
        if unsafe { libc::personality(persona) } == -1 {
            return Err(format!("failed to set the personality: {}", Errno::last()));
        }
    }
    if let Some(profile) = &s.apparmor {
        libcontainer::apparmor::apply_profile(profile).map_err(|e| {
            format!(
                "failed to apply the apparmor profile {profile}: {}",
                chain(&e)
            )
        })?;
    }
    if let Some(mask) = s.umask {
        nix::sys::stat::umask(mask);
    }
    let cwd_err = |e: Errno| format!("failed to change directory to {}: {e}", s.cwd.display());
    // As root first: the working directory may not be reachable by the container's user.
    let chdir_later = match chdir(&s.cwd) {
        Ok(()) => false,
        Err(Errno::EPERM | Errno::EACCES) => true,
        Err(e) => return Err(cwd_err(e)),
    };
    let mut env = s.env.clone();
    if procinfo::env_value(&env, "HOME").is_none_or(str::is_empty)
        && let Some(home) = home_of(s.uid)
    {
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={home}"));
    }
    if !s.additional_gids.is_empty() {
        let gids: Vec<Gid> = s
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&gids).map_err(|e| {
            format!(
                "failed to set the supplementary groups {:?}: {e}",
                s.additional_gids
            )
        })?;
    }
    set_ids(s.uid, s.gid)?;
    if !s.no_new_privileges {
        load_seccomp(s.seccomp.as_ref())?;
    }
    let syscall = create_syscall();
    libcontainer::capabilities::reset_effective(&*syscall)
        .map_err(|e| format!("failed to reset the effective capabilities: {}", chain(&e)))?;
    if let Some(caps) = &s.capabilities {
        libcontainer::capabilities::drop_privileges(caps, &*syscall)
            .map_err(|e| format!("failed to set the capabilities: {}", chain(&e)))?;
    }
    if chdir_later {
        chdir(&s.cwd).map_err(cwd_err)?;
    }
    let search = procinfo::env_value(&env, "PATH").unwrap_or(procinfo::DEFAULT_PATH);
    let program = procinfo::find_executable(&s.program, search, is_executable)
        .ok_or_else(|| format!("executable file not found in $PATH: {}", s.program))?;
    let program_c = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| format!("NUL byte in {}", program.display()))?;
    let env_c: Vec<CString> = env
        .into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect();
    nix::unistd::dup2_stdin(&stdio.stdin).map_err(|e| format!("failed to set stdin: {e}"))?;
    nix::unistd::dup2_stdout(&stdio.stdout).map_err(|e| format!("failed to set stdout: {e}"))?;
    nix::unistd::dup2_stderr(&stdio.stderr).map_err(|e| format!("failed to set stderr: {e}"))?;
    drop(stdio);
    // Nothing but stdio survives execve (every descriptor of the shim's is close-on-exec
    // already; this covers any that is not).
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags on descriptors >= 3.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        return Err(format!(
            "failed to mark descriptors close-on-exec: {}",
            Errno::last()
        ));
    }
    // The helper blocks SIGTERM/SIGINT/SIGHUP/SIGCHLD (into its signalfd) and ignores SIGPIPE
    // before it forks, so that a cancel cannot slip in between; both survive execve, so the
    // command gets the defaults back here (handlers reset themselves on execve).
    reset_signals().map_err(|e| format!("failed to reset the signal mask: {e}"))?;
    if s.no_new_privileges {
        load_seccomp(s.seccomp.as_ref())?;
    }
    let Err(err) = execve(&program_c, &s.args, &env_c);
    Err(format!("failed to execute {}: {err}", program.display()))
}

/// An empty signal mask and the default SIGPIPE disposition, for the process about to exec.
fn reset_signals() -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, sigaction};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no code of ours; this process is single-threaded (a
    // fork of the single-threaded helper) and about to execve.
    unsafe { sigaction(Signal::SIGPIPE, &default) }?;
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxPersonalityBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
        LinuxSyscallBuilder, ProcessBuilder, SpecBuilder, UserBuilder,
    };

    fn exec_args(command: &[&str]) -> ExecArgs {
        ExecArgs {
            id: "c1".into(),
            libcontainer_root: PathBuf::from("/run/lc"),
            timeout: None,
            env: vec![
                ("EXTRA".into(), "1".into()),
                ("A".into(), "override".into()),
            ],
            cwd: None,
            tty: false,
            stream: false,
            result_fd: None,
            console_socket_fd: None,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn spec(no_new_privileges: Option<bool>, linux: oci_spec::runtime::Linux) -> Spec {
        let mut process = ProcessBuilder::default()
            .args(vec!["sleep".to_string()])
            .env(vec!["PATH=/bin".to_string(), "A=1".to_string()])
            .cwd("/work")
            .user(
                UserBuilder::default()
                    .uid(1000u32)
                    .gid(100u32)
                    .additional_gids(vec![5u32, 6])
                    .umask(0o027u32)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        process.set_no_new_privileges(no_new_privileges);
        SpecBuilder::default()
            .process(process)
            .linux(linux)
            .build()
            .unwrap()
    }

    #[test]
    fn settings_come_from_the_spec_and_the_request() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .build()
            .unwrap();
        let linux = LinuxBuilder::default().seccomp(profile).build().unwrap();
        let s = settings("c1", &spec(None, linux), &exec_args(&["ls", "-l"])).unwrap();
        assert_eq!(s.program, "ls");
        assert_eq!(s.args.len(), 2);
        assert_eq!(s.env, vec!["PATH=/bin", "EXTRA=1", "A=override"]);
        assert_eq!(s.cwd, PathBuf::from("/work"));
        assert_eq!((s.uid, s.gid), (1000, 100));
        assert_eq!(s.additional_gids, vec![5, 6]);
        assert_eq!(s.umask, Some(Mode::from_bits(0o027).unwrap()));
        assert!(!s.no_new_privileges);
        assert!(s.seccomp.is_some());
        assert_eq!(s.personality, None);

        let mut args = exec_args(&["ls"]);
        args.cwd = Some(PathBuf::from("/tmp"));
        let s = settings(
            "c1",
            &spec(Some(true), LinuxBuilder::default().build().unwrap()),
            &args,
        )
        .unwrap();
        assert!(s.no_new_privileges);
        assert!(s.seccomp.is_none());
        assert_eq!(s.cwd, PathBuf::from("/tmp"));
    }

    #[test]
    fn refuses_what_exec_cannot_do() {
        let linux = || LinuxBuilder::default().build().unwrap();
        let mut args = exec_args(&["ls"]);
        args.cwd = Some(PathBuf::from("relative"));
        let err = settings("c1", &spec(None, linux()), &args).err().unwrap();
        assert!(err.to_string().contains("container c1"), "{err}");

        let err = settings("c1", &spec(None, linux()), &exec_args(&[]))
            .err()
            .unwrap();
        assert!(matches!(err, TenantError::Invalid { .. }), "{err}");

        let err = settings("c1", &spec(None, linux()), &exec_args(&["a\0b"]))
            .err()
            .unwrap();
        assert!(matches!(err, TenantError::Invalid { .. }), "{err}");

        let notify = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                LinuxSyscallBuilder::default()
                    .names(vec!["mkdir".to_string()])
                    .action(LinuxSeccompAction::ScmpActNotify)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let linux_notify = LinuxBuilder::default().seccomp(notify).build().unwrap();
        let err = settings("c1", &spec(None, linux_notify), &exec_args(&["ls"]))
            .err()
            .unwrap();
        assert!(matches!(err, TenantError::Unsupported { .. }), "{err}");

        let personality = LinuxPersonalityBuilder::default()
            .domain(LinuxPersonalityDomain::PerLinux32)
            .build()
            .unwrap();
        let linux_32 = LinuxBuilder::default()
            .personality(personality)
            .build()
            .unwrap();
        let s = settings("c1", &spec(None, linux_32), &exec_args(&["ls"])).unwrap();
        assert_eq!(s.personality, Some(PER_LINUX32));
    }
}
