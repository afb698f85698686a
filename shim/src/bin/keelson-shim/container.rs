//! The shim's libcontainer calls: create (init), load for exec, and readable errors.
//!
//! libcontainer forks with a raw clone3 and must be called from a single-threaded process
//! (FACTS.md): the shim never starts a thread.
//!
//! The systemd cgroup driver (`run --systemd-cgroup`, libcontainer's `with_systemd(true)`):
//! libcgroups 0.7 drives systemd only on a cgroup v2 host (`/sys/fs/cgroup` is cgroup2). There,
//! with a `slice:prefix:name` cgroupsPath, it checks that systemd is the init system
//! (`/run/systemd/system` is a directory), connects to systemd over D-Bus (the system bus at
//! `$DBUS_SYSTEM_BUS_ADDRESS` or `/var/run/dbus/system_bus_socket`, else systemd's own
//! `/run/systemd/private`, as root) and has it start a transient `prefix-name.scope` in the
//! slice; an absolute cgroupsPath falls back to its cgroupfs v2 manager. On a v1 or hybrid host
//! it ignores the flag and uses the v1 cgroupfs manager, which would take `slice:prefix:name` as
//! a literal directory name. [`systemd_driver_problem`] refuses those cases up front, with a
//! reason, instead.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;

/// A libcontainer operation failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} container {id}: {detail}")]
pub struct ContainerError {
    pub action: &'static str,
    pub id: String,
    /// The libcontainer error and its causes, flattened (some of its variants hide their text).
    pub detail: String,
}

impl ContainerError {
    pub fn new(action: &'static str, id: &str, source: &LibcontainerError) -> Self {
        ContainerError {
            action,
            id: id.to_owned(),
            detail: describe(source),
        }
    }
}

/// A libcontainer error with its whole cause chain on one line.
pub fn describe(err: &LibcontainerError) -> String {
    let mut text = err.to_string();
    match err {
        LibcontainerError::InvalidInput(detail) => {
            text.push_str(": ");
            text.push_str(detail);
        }
        LibcontainerError::OtherSyscall(e) => {
            text.push_str(": ");
            text.push_str(&e.to_string());
        }
        _ => {}
    }
    with_causes(text, err)
}

/// An error and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    with_causes(err.to_string(), err)
}

/// `text` followed by each cause of `err` it does not already say.
fn with_causes(mut text: String, err: &dyn std::error::Error) -> String {
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The stdio the container's init starts with.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// How the init's stdio is set up.
pub enum InitIo {
    /// These descriptors become its fds 0-2.
    Stdio(Stdio),
    /// A terminal (`process.terminal: true`): the init allocates a pty in the container and
    /// sends the master to this listening socket (see `console`).
    Console(PathBuf),
}

/// Where systemd's presence and the cgroup hierarchy are looked for (tests use others).
pub struct SystemdHost<'a> {
    /// `/run/systemd/system`: a directory when systemd is the init system.
    pub systemd_dir: &'a Path,
    /// `/sys/fs/cgroup`.
    pub cgroup_root: &'a Path,
}

impl SystemdHost<'static> {
    /// This host's own paths.
    pub fn real() -> Self {
        SystemdHost {
            systemd_dir: Path::new("/run/systemd/system"),
            cgroup_root: Path::new("/sys/fs/cgroup"),
        }
    }
}

/// Whether `cgroups_path` is systemd's `slice:prefix:name`.
pub fn is_systemd_cgroups_path(cgroups_path: &Path) -> bool {
    cgroups_path.to_str().is_some_and(|p| {
        !p.contains('/') && p.split(':').count() == 3 && p.split(':').nth(2) != Some("")
    })
}

/// Why the systemd cgroup driver cannot place a container with `cgroups_path` on this host
/// (see the module documentation); `None` when libcontainer can try.
pub fn systemd_driver_problem(
    host: &SystemdHost<'_>,
    cgroups_path: Option<&Path>,
) -> Option<String> {
    match cgroups_path {
        Some(p) if is_systemd_cgroups_path(p) => {}
        other => {
            return Some(format!(
                "the systemd cgroup driver needs a cgroupsPath of the form slice:prefix:name, \
                 not {}",
                other.map_or("none".into(), |p| format!("{:?}", p.display().to_string()))
            ));
        }
    }
    if !host.systemd_dir.is_dir() {
        return Some(format!(
            "the systemd cgroup driver needs a running systemd (no {})",
            host.systemd_dir.display()
        ));
    }
    let unified =
        statfs(host.cgroup_root).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if !unified {
        return Some(format!(
            "the systemd cgroup driver needs cgroup v2 ({} is not a cgroup2 mount; on a v1 or \
             hybrid host libcontainer cannot create systemd scopes)",
            host.cgroup_root.display()
        ));
    }
    None
}

/// libcontainer `create`: the init is cloned (a child of this process), set up, and left
/// waiting for `start`. On failure libcontainer removes what it created (state dir, cgroup).
/// With `systemd`, systemd places the container's cgroup (see the module documentation).
pub fn create(
    id: &str,
    bundle: &Path,
    root: &Path,
    io: InitIo,
    systemd: bool,
) -> Result<Container, ContainerError> {
    let err = |e: LibcontainerError| ContainerError::new("create", id, &e);
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(err)?;
    let builder = match io {
        InitIo::Stdio(stdio) => builder
            .with_stdin(stdio.stdin)
            .with_stdout(stdio.stdout)
            .with_stderr(stdio.stderr),
        InitIo::Console(socket) => builder.with_console_socket(Some(socket)),
    };
    builder
        .validate_id()
        .map_err(err)?
        .as_init(bundle)
        .with_systemd(systemd)
        .with_detach(true)
        .build()
        .map_err(err)
}

/// Load an existing container's libcontainer state.
pub fn load(root: &Path, id: &str) -> Result<Container, ContainerError> {
    Container::load(root.join(id)).map_err(|e| ContainerError::new("load", id, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_paths() {
        for good in [
            "keelson.slice:keelson:c1",
            ":keelson:c1",
            "a-b.slice:p:n.slice",
        ] {
            assert!(is_systemd_cgroups_path(Path::new(good)), "{good}");
        }
        for bad in [
            "/keelson/pod-x/c1",
            "keelson.slice:c1",
            "a:b:c:d",
            "s:p:",
            "x/y:p:n",
        ] {
            assert!(!is_systemd_cgroups_path(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn the_systemd_driver_is_refused_without_systemd_or_cgroup_v2() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("run/systemd/system");
        let path = Some(Path::new("keelson.slice:keelson:c1"));
        let host = SystemdHost {
            systemd_dir: &missing,
            cgroup_root: Path::new("/sys/fs/cgroup"),
        };
        for bad in [None, Some(Path::new("/keelson/pod-x/c1"))] {
            let problem = systemd_driver_problem(&host, bad).unwrap();
            assert!(problem.contains("slice:prefix:name"), "{problem}");
        }
        let problem = systemd_driver_problem(&host, path).unwrap();
        assert_eq!(
            problem,
            format!(
                "the systemd cgroup driver needs a running systemd (no {})",
                missing.display()
            )
        );

        // systemd "running", but the cgroup root is not a cgroup2 mount (a plain directory).
        std::fs::create_dir_all(&missing).unwrap();
        let host = SystemdHost {
            systemd_dir: &missing,
            cgroup_root: dir.path(),
        };
        let problem = systemd_driver_problem(&host, path).unwrap();
        assert!(problem.contains("needs cgroup v2"), "{problem}");
        assert!(
            problem.contains(&dir.path().display().to_string()),
            "{problem}"
        );
    }

    #[test]
    fn this_host_cannot_use_the_systemd_driver() {
        // FACTS.md: PID 1 is not systemd and the host is cgroup v1 hybrid; on a systemd + v2
        // host the check passes and libcontainer talks to systemd.
        let problem = systemd_driver_problem(&SystemdHost::real(), Some(Path::new("k.slice:k:c1")));
        if Path::new("/run/systemd/system").is_dir() {
            let v2 =
                statfs("/sys/fs/cgroup").is_ok_and(|f| f.filesystem_type() == CGROUP2_SUPER_MAGIC);
            assert_eq!(problem.is_none(), v2, "{problem:?}");
        } else {
            assert!(problem.unwrap().contains("needs a running systemd"));
        }
    }
}
