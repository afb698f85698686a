//! A streaming exec: the shim's exec helper runs the command in the container (never this
//! async daemon), its stdio wired to the client's streams through pipes or, with `tty`, a pty
//! the helper allocates inside the container and whose master it sends over a console socket;
//! the exit code comes back on a result pipe and goes out on the error stream.

use super::pty;
use super::remotecommand::{Outcome, RemoteIo, wait_gone};
use crate::container::manager::ContainerManager;
use keelson_shim::protocol::StreamExecResult;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::task::JoinHandle;

/// After the process exited, how long its output may keep flowing (background children
/// holding the pipes or the terminal).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long the exec helper has to end after it was told to (client gone).
const HELPER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// What to run, from the cached CRI `ExecRequest`.
#[derive(Debug, Clone)]
pub struct ExecPlan {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
}

/// Runs the exec and reports its outcome on `io`.
pub async fn serve(containers: Arc<ContainerManager>, plan: ExecPlan, mut io: RemoteIo) {
    let outcome = match run(&containers, &plan, &mut io).await {
        Ok(code) => Outcome::Exited {
            code,
            command: plan.cmd.clone(),
        },
        Err(message) => Outcome::Failed(message),
    };
    tracing::debug!(id = %plan.container_id, ?outcome, "streaming exec ended");
    io.finish(outcome).await;
}

fn copy_out(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    to: Option<super::remotecommand::BoxWrite>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut to = to;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(w) = to.as_mut()
                && (w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err())
            {
                to = None;
            }
        }
        if let Some(mut w) = to {
            let _ = w.shutdown().await;
        }
    })
}

async fn run(
    containers: &ContainerManager,
    plan: &ExecPlan,
    io: &mut RemoteIo,
) -> Result<i32, String> {
    let (result_r, result_w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("creating the exec result pipe: {e}"))?;
    let result_fd = result_w.as_raw_fd();
    // With a terminal: our end of the console socket, and the helper's (its number is passed).
    let console = plan
        .tty
        .then(pty::console_socket)
        .transpose()
        .map_err(|e| format!("creating the exec console socket: {e}"))?;
    let console_fd = console.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    let std_cmd = containers
        .exec_stream_command(&plan.container_id, &plan.cmd, console_fd, result_fd)
        .map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::from(std_cmd);
    if plan.tty {
        // The process's stdio is the container's pty: the helper's own is not used.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    } else {
        let pipe_if = |b: bool| if b { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe_if(io.stdin.is_some()))
            .stdout(pipe_if(io.stdout.is_some()))
            .stderr(pipe_if(io.stderr.is_some()));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the exec helper: {e}"))?;
    drop(result_w);
    drop(cmd);
    // The helper's end is the helper's alone now: end of file once it (and the process in the
    // container) closed it, sent or not.
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let master = match console {
        Some(socket) => {
            let gone = io.gone.clone();
            receive_master(&socket, &plan.container_id, child.id(), gone).await
        }
        None => None,
    };

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut outputs: Vec<JoinHandle<()>> = Vec::new();
    match &master {
        Some(m) => {
            outputs.push(copy_out(pty::PtyReader(m.clone()), io.stdout.take()));
            if let Some(mut stdin) = io.stdin.take() {
                let m_in = m.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match stdin.read(&mut buf).await {
                            // A terminal has no end of input: the client's close changes nothing.
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if m_in.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
            if let Some(mut sizes) = io.resize.take() {
                let m_size = m.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(size) = sizes.recv().await {
                        if let Err(e) = m_size.resize(size) {
                            tracing::debug!(error = %e, "setting the exec terminal size failed");
                        }
                    }
                }));
            }
        }
        None => {
            if let Some(out) = child.stdout.take() {
                outputs.push(copy_out(out, io.stdout.take()));
            }
            if let Some(err) = child.stderr.take() {
                outputs.push(copy_out(err, io.stderr.take()));
            }
            if let (Some(mut to), Some(mut from)) = (child.stdin.take(), io.stdin.take()) {
                tasks.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    // Dropping `to` closes the process's stdin: the client's end of input.
                    let _ = to.shutdown().await;
                }));
            }
        }
    }

    let exited = wait_or_cancel(&mut child, io).await;
    let drained = async {
        for o in outputs.iter_mut() {
            let _ = o.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        tracing::debug!(id = %plan.container_id, "exec output still open after the process exited");
    }
    for t in tasks.iter().chain(outputs.iter()) {
        t.abort();
    }
    exited?;
    let report = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::fs::File::from(result_r)
            .read_to_string(&mut text)
            .map(|_| text)
    })
    .await
    .map_err(|e| format!("reading the exec result: {e}"))?
    .map_err(|e| format!("reading the exec result: {e}"))?;
    let result: StreamExecResult = serde_json::from_str(report.trim()).map_err(|e| {
        format!(
            "exec in container {}: the helper reported no result ({e})",
            plan.container_id
        )
    })?;
    match (result.exit_code, result.error) {
        (_, Some(error)) => Err(error),
        (Some(code), None) => Ok(code),
        (None, None) => Err(format!(
            "exec in container {}: the helper reported neither an exit code nor an error",
            plan.container_id
        )),
    }
}

/// The exec's terminal from the helper `pid`; `None` when it failed before sending one (its
/// result says why) or the client went away meanwhile (`wait_or_cancel` sees that next).
async fn receive_master(
    socket: &pty::ConsoleSocket,
    id: &str,
    pid: Option<u32>,
    mut gone: tokio::sync::watch::Receiver<bool>,
) -> Option<Arc<pty::PtyMaster>> {
    tokio::select! {
        received = socket.receive_master() => match received {
            Ok(master) => master.map(Arc::new),
            Err(e) => {
                // Nobody could talk to the process: end it (the helper reports 137).
                tracing::warn!(%id, error = %e, "receiving the exec terminal failed");
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                None
            }
        },
        _ = wait_gone(&mut gone) => None,
    }
}

/// Waits for the helper; if the client goes away first, the helper kills the process.
async fn wait_or_cancel(child: &mut Child, io: &mut RemoteIo) -> Result<(), String> {
    let mut gone = io.gone.clone();
    tokio::select! {
        status = child.wait() => status.map(drop).map_err(|e| format!("waiting for the exec helper: {e}")),
        _ = wait_gone(&mut gone) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            // The helper kills the command and exits at once; one that does not is killed so
            // that the session's descriptors and task are freed whatever happened.
            if tokio::time::timeout(HELPER_EXIT_GRACE, child.wait()).await.is_err() {
                tracing::warn!("exec helper ignored SIGTERM for {HELPER_EXIT_GRACE:?}: killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Err("the client went away".into())
        }
    }
}
