//! The shim's libcontainer calls: create (init), load for exec, and readable errors.
//!
//! libcontainer forks with a raw clone3 and must be called from a single-threaded process
//! (FACTS.md): the shim never starts a thread.

use std::error::Error as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

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

/// libcontainer `create`: the init is cloned (a child of this process), set up, and left
/// waiting for `start`. On failure libcontainer removes what it created (state dir, cgroup).
pub fn create(
    id: &str,
    bundle: &Path,
    root: &Path,
    io: InitIo,
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
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(err)
}

/// Load an existing container's libcontainer state.
pub fn load(root: &Path, id: &str) -> Result<Container, ContainerError> {
    Container::load(root.join(id)).map_err(|e| ContainerError::new("load", id, &e))
}
