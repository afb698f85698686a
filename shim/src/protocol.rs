//! The runtime <-> shim protocol (v1): request/response types, the line codec, the on-disk
//! files (`shim.json`, `exit.json`), the `exec` result and a blocking client.
//!
//! Wire format: one JSON object per line (`\n`-terminated) over the unix stream socket
//! `<state-dir>/shim.sock`. A connection carries one request or several sequentially; each
//! request gets exactly one response line, in order. Every object carries `"v":1`.
//!
//! ```text
//! -> {"v":1,"op":"start"}
//! -> {"v":1,"op":"kill","signal":9,"all":false}
//! -> {"v":1,"op":"state"}          <- {"v":1,"type":"state","status":"running","pid":42,...}
//! -> {"v":1,"op":"reopen_log"}
//! -> {"v":1,"op":"wait"}           <- (when the init has exited) {"v":1,"type":"exited","exit_code":137,...}
//! -> {"v":1,"op":"shutdown"}
//!                                  <- {"v":1,"type":"ok"}
//!                                  <- {"v":1,"type":"error","kind":"invalid_state","message":"..."}
//! ```

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The protocol version every message and file carries as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The shim's socket, inside its state directory.
pub const SOCKET_FILE: &str = "shim.sock";
/// The shim's pid file, inside its state directory.
pub const SHIM_FILE: &str = "shim.json";
/// The container's exit record, inside the shim's state directory.
pub const EXIT_FILE: &str = "exit.json";
/// The longest request or response line either side accepts (bytes, without the `\n`).
pub const MAX_LINE: usize = 64 * 1024;
/// What `keelson-shim run` writes to its `--ready-fd` once the container is created.
pub const READY_OK: &str = "ok";
/// Prefix of the line `keelson-shim run` writes to its `--ready-fd` when creation failed.
pub const READY_ERROR_PREFIX: &str = "error: ";
/// Default timeout of [`ShimClient`] calls (except [`ShimClient::wait`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the protocol codec, the state files and the client.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to encode shim message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("malformed shim message {line:?}: {source}")]
    Decode {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported shim protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { got: u32 },
    #[error("shim message longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("shim at {path} closed the connection before answering")]
    Closed { path: PathBuf },
    #[error("shim answered {got} to {request}")]
    UnexpectedResponse { request: &'static str, got: String },
    #[error("shim refused {request}: {message}")]
    Shim {
        request: &'static str,
        kind: ErrorKind,
        message: String,
    },
    #[error("invalid base64 in exec result {stream}: {source}")]
    Base64 {
        stream: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

impl ProtocolError {
    /// True when a client call gave up because its timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProtocolError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// The shim's error kind, when the shim answered with an error.
    pub fn shim_kind(&self) -> Option<ErrorKind> {
        match self {
            ProtocolError::Shim { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// A request from the runtime to a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start the created container (libcontainer `start`): the init execs its process.
    Start,
    /// Send `signal` to the init (`all: false`) or to every process in the container's cgroup.
    /// Killing a container whose init has already exited is not an error (`all: false` is a no-op).
    Kill { signal: i32, all: bool },
    /// Answered with [`Response::State`].
    State,
    /// Close and reopen `--log-path` (the runtime renamed the old file first).
    ReopenLog,
    /// Answered with [`Response::Exited`] once the init has exited (at once if it already has).
    Wait,
    /// Only once the container is stopped: delete the libcontainer container (state dir and
    /// cgroup), answer `ok`, remove `shim.sock` and `shim.json` (`exit.json` stays) and exit.
    Shutdown,
}

impl Request {
    /// The request's name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Start => "start",
            Request::Kill { .. } => "kill",
            Request::State => "state",
            Request::ReopenLog => "reopen_log",
            Request::Wait => "wait",
            Request::Shutdown => "shutdown",
        }
    }
}

/// A shim's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Ok,
    State(StateInfo),
    Exited(ExitInfo),
    Error(ErrorReply),
}

impl Response {
    fn describe(&self) -> String {
        match self {
            Response::Ok => "ok".to_owned(),
            Response::State(_) => "state".to_owned(),
            Response::Exited(_) => "exited".to_owned(),
            Response::Error(e) => format!("error ({})", e.message),
        }
    }
}

/// The container's lifecycle as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// libcontainer `create` done, `Start` not yet asked.
    Created,
    Running,
    /// The init has exited and its exit is recorded in `exit.json`.
    Stopped,
}

/// Answer to [`Request::State`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    pub status: ContainerStatus,
    /// The container init's pid (host pid namespace).
    pub pid: i32,
    /// When `Start` succeeded.
    #[serde(default)]
    pub started_at_unix_nanos: Option<i64>,
    /// Set once `status` is `stopped`.
    #[serde(default)]
    pub exit: Option<ExitInfo>,
}

/// Why the container's init exited, as CRI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Any other exit code, or death by a signal.
    Error,
    /// The kernel OOM killer killed a process in the container's cgroup.
    #[serde(rename = "OOMKilled")]
    OomKilled,
}

impl ExitReason {
    /// The CRI `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
        }
    }

    /// The reason for an exit code, given whether the cgroup saw an OOM kill.
    pub fn classify(exit_code: i32, oom_killed: bool) -> Self {
        if oom_killed {
            ExitReason::OomKilled
        } else if exit_code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        }
    }
}

/// How the container's init exited. A death by signal N is reported as exit code 128+N
/// (137 for SIGKILL), as containerd and CRI-O report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub exited_at_unix_nanos: i64,
    pub reason: ExitReason,
    #[serde(default)]
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// Lowercase, names the container id.
    pub message: String,
}

/// Classes of shim errors, for the runtime to map onto gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request does not fit the container's state (start twice, shutdown while running).
    InvalidState,
    /// The request could not be parsed or has bad arguments.
    BadRequest,
    /// The request's `v` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The operation failed (libcontainer, file system).
    Failed,
}

/// A message with its protocol version: `{"v":1, ...fields of T...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Versioned<T> {
    pub fn new(body: T) -> Self {
        Versioned {
            v: PROTOCOL_VERSION,
            body,
        }
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

fn encode_line<T: Serialize>(body: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut line = serde_json::to_vec(&Versioned::new(body)).map_err(ProtocolError::Encode)?;
    line.push(b'\n');
    Ok(line)
}

fn decode_line<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(ProtocolError::LineTooLong);
    }
    let decode_err = |source| ProtocolError::Decode {
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
        source,
    };
    let version: VersionOnly = serde_json::from_slice(line).map_err(decode_err)?;
    if version.v != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion { got: version.v });
    }
    let msg: Versioned<T> = serde_json::from_slice(line).map_err(decode_err)?;
    Ok(msg.body)
}

/// One request as a wire line (JSON + `\n`).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode_line(request)
}

/// Parse one request line (with or without its `\n`), checking the version first.
pub fn decode_request(line: &[u8]) -> Result<Request, ProtocolError> {
    decode_line(line)
}

/// One response as a wire line (JSON + `\n`).
pub fn encode_response(response: &Response) -> Result<Vec<u8>, ProtocolError> {
    encode_line(response)
}

/// Parse one response line (with or without its `\n`), checking the version first.
pub fn decode_response(line: &[u8]) -> Result<Response, ProtocolError> {
    decode_line(line)
}

/// Interpret the line `keelson-shim run` wrote to its ready fd: `Ok` for `ok`, the error text
/// otherwise (an empty line means the shim died before reporting).
pub fn parse_ready_line(line: &str) -> Result<(), String> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line == READY_OK {
        Ok(())
    } else if let Some(err) = line.strip_prefix(READY_ERROR_PREFIX) {
        Err(err.to_owned())
    } else if line.is_empty() {
        Err("shim exited before reporting readiness".to_owned())
    } else {
        Err(line.to_owned())
    }
}

/// `<state-dir>/shim.json`: who is serving the container. Written atomically once the
/// container is created, removed on `Shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimFile {
    pub id: String,
    pub shim_pid: i32,
    pub init_pid: i32,
    /// `/proc/<shim_pid>/stat` start time (clock ticks since boot): tells a live shim from a
    /// reused pid after a reboot-less runtime restart.
    #[serde(default)]
    pub shim_start_ticks: Option<u64>,
    /// Same for the container's init.
    #[serde(default)]
    pub init_start_ticks: Option<u64>,
}

/// The path of `name` inside a shim state directory.
pub fn state_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(name)
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProtocolError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| ProtocolError::Io {
            action,
            path,
            source,
        }
    };
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_versioned<T: Serialize>(path: &Path, body: &T) -> Result<(), ProtocolError> {
    let mut bytes = serde_json::to_vec(&Versioned::new(body)).map_err(ProtocolError::Encode)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn read_versioned<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ProtocolError> {
    match fs::read(path) {
        Ok(bytes) => decode_line(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProtocolError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write `<state-dir>/exit.json` atomically.
pub fn write_exit_file(state_dir: &Path, exit: &ExitInfo) -> Result<(), ProtocolError> {
    write_versioned(&state_file(state_dir, EXIT_FILE), exit)
}

/// Read `<state-dir>/exit.json`; `None` when the container has not exited (or no shim recorded it).
pub fn read_exit_file(state_dir: &Path) -> Result<Option<ExitInfo>, ProtocolError> {
    read_versioned(&state_file(state_dir, EXIT_FILE))
}

/// Write `<state-dir>/shim.json` atomically.
pub fn write_shim_file(state_dir: &Path, shim: &ShimFile) -> Result<(), ProtocolError> {
    write_versioned(&state_file(state_dir, SHIM_FILE), shim)
}

/// Read `<state-dir>/shim.json`; `None` when missing.
pub fn read_shim_file(state_dir: &Path) -> Result<Option<ShimFile>, ProtocolError> {
    read_versioned(&state_file(state_dir, SHIM_FILE))
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`, clock ticks since boot), or
/// `None` when there is no such process.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': skip past the
    // last ')'. Field 3 (state) is then the first field; start time is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What `keelson-shim exec` prints on its stdout (one JSON object) when the command ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The command's exit code; 128+N when a signal N killed it (137 after a timeout).
    pub exit_code: i32,
    pub stdout_b64: String,
    pub stderr_b64: String,
    /// The deadline passed and the process was killed.
    pub timed_out: bool,
    /// More output than the cap was produced; the rest was discarded.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
}

impl ExecResult {
    /// Decoded stdout.
    pub fn stdout(&self) -> Result<Vec<u8>, ProtocolError> {
        decode_b64("stdout", &self.stdout_b64)
    }

    /// Decoded stderr.
    pub fn stderr(&self) -> Result<Vec<u8>, ProtocolError> {
        decode_b64("stderr", &self.stderr_b64)
    }

    /// Encode raw output into a result.
    pub fn from_output(
        exit_code: i32,
        stdout: &[u8],
        stderr: &[u8],
        timed_out: bool,
        stdout_truncated: bool,
        stderr_truncated: bool,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        ExecResult {
            exit_code,
            stdout_b64: b64.encode(stdout),
            stderr_b64: b64.encode(stderr),
            timed_out,
            stdout_truncated,
            stderr_truncated,
        }
    }
}

/// What `keelson-shim exec --stream` writes to its `--result-fd` (one JSON line) before it exits
/// 0: the exit code when the process ran, else why it could not be started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StreamExecResult {
    /// The process's exit code; 128+N when a signal N killed it (137 after a timeout or a
    /// cancellation). `None` when it never ran.
    pub exit_code: Option<i32>,
    /// Why the process could not be started (names the container id). `None` when it ran.
    pub error: Option<String>,
}

impl StreamExecResult {
    /// The process ran and ended with `exit_code`.
    pub fn exited(exit_code: i32) -> Self {
        StreamExecResult {
            exit_code: Some(exit_code),
            error: None,
        }
    }

    /// The process could not be started.
    pub fn failed(error: impl Into<String>) -> Self {
        StreamExecResult {
            exit_code: None,
            error: Some(error.into()),
        }
    }
}

fn decode_b64(stream: &'static str, text: &str) -> Result<Vec<u8>, ProtocolError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|source| ProtocolError::Base64 { stream, source })
}

/// A blocking client for one shim socket. Requests on one client are sequential.
pub struct ShimClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    timeout: Option<Duration>,
}

impl ShimClient {
    /// Connect to `<state-dir>/shim.sock` (pass the socket path) with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ProtocolError> {
        Self::connect_with_timeout(path, Some(DEFAULT_TIMEOUT))
    }

    /// Connect with a per-call timeout (`None`: block forever).
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Option<Duration>,
    ) -> Result<Self, ProtocolError> {
        let path = path.as_ref().to_owned();
        let stream = UnixStream::connect(&path).map_err(|source| ProtocolError::Io {
            action: "connect to shim socket",
            path: path.clone(),
            source,
        })?;
        let mut client = ShimClient {
            path,
            reader: BufReader::new(stream),
            timeout: None,
        };
        client.set_timeout(timeout)?;
        Ok(client)
    }

    /// Change the per-call timeout (`None`: block forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ProtocolError> {
        let timeout = timeout.filter(|t| !t.is_zero());
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|source| self.io_err("set timeout on", source))?;
        self.timeout = timeout;
        Ok(())
    }

    fn io_err(&self, action: &'static str, source: io::Error) -> ProtocolError {
        ProtocolError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    /// Send one request and read its response (an error answer is returned as `Ok(Response::Error)`).
    pub fn call(&mut self, request: &Request) -> Result<Response, ProtocolError> {
        let line = encode_request(request)?;
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|source| self.io_err("send request to shim at", source))?;
        let mut buf = Vec::new();
        let n = self
            .reader
            .by_ref()
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|source| self.io_err("read response from shim at", source))?;
        if n == 0 {
            return Err(ProtocolError::Closed {
                path: self.path.clone(),
            });
        }
        if !buf.ends_with(b"\n") {
            return Err(if buf.len() > MAX_LINE {
                ProtocolError::LineTooLong
            } else {
                ProtocolError::Closed {
                    path: self.path.clone(),
                }
            });
        }
        decode_response(&buf)
    }

    fn expect_ok(&mut self, request: Request) -> Result<(), ProtocolError> {
        match self.call(&request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(request.name(), other)),
        }
    }

    /// [`Request::Start`].
    pub fn start(&mut self) -> Result<(), ProtocolError> {
        self.expect_ok(Request::Start)
    }

    /// [`Request::Kill`].
    pub fn kill(&mut self, signal: i32, all: bool) -> Result<(), ProtocolError> {
        self.expect_ok(Request::Kill { signal, all })
    }

    /// [`Request::State`].
    pub fn state(&mut self) -> Result<StateInfo, ProtocolError> {
        match self.call(&Request::State)? {
            Response::State(state) => Ok(state),
            other => Err(unexpected("state", other)),
        }
    }

    /// [`Request::ReopenLog`].
    pub fn reopen_log(&mut self) -> Result<(), ProtocolError> {
        self.expect_ok(Request::ReopenLog)
    }

    /// [`Request::Wait`], blocking up to `timeout` (`None`: until the init exits). The client's
    /// own timeout is restored afterwards.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<ExitInfo, ProtocolError> {
        let saved = self.timeout;
        self.set_timeout(timeout)?;
        let answer = self.call(&Request::Wait);
        self.set_timeout(saved)?;
        match answer? {
            Response::Exited(exit) => Ok(exit),
            other => Err(unexpected("wait", other)),
        }
    }

    /// [`Request::Shutdown`].
    pub fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.expect_ok(Request::Shutdown)
    }
}

fn unexpected(request: &'static str, response: Response) -> ProtocolError {
    match response {
        Response::Error(ErrorReply { kind, message }) => ProtocolError::Shim {
            request,
            kind,
            message,
        },
        other => ProtocolError::UnexpectedResponse {
            request,
            got: other.describe(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(r: Request, wire: &str) {
        let line = encode_request(&r).unwrap();
        assert_eq!(std::str::from_utf8(&line).unwrap(), format!("{wire}\n"));
        assert_eq!(decode_request(&line).unwrap(), r);
    }

    #[test]
    fn requests_on_the_wire() {
        roundtrip_request(Request::Start, r#"{"v":1,"op":"start"}"#);
        roundtrip_request(
            Request::Kill {
                signal: 9,
                all: true,
            },
            r#"{"v":1,"op":"kill","signal":9,"all":true}"#,
        );
        roundtrip_request(Request::State, r#"{"v":1,"op":"state"}"#);
        roundtrip_request(Request::ReopenLog, r#"{"v":1,"op":"reopen_log"}"#);
        roundtrip_request(Request::Wait, r#"{"v":1,"op":"wait"}"#);
        roundtrip_request(Request::Shutdown, r#"{"v":1,"op":"shutdown"}"#);
    }

    #[test]
    fn responses_on_the_wire() {
        let exit = ExitInfo {
            exit_code: 137,
            exited_at_unix_nanos: 1_700_000_000_123_456_789,
            reason: ExitReason::OomKilled,
            message: String::new(),
        };
        let cases = [
            (Response::Ok, r#"{"v":1,"type":"ok"}"#.to_owned()),
            (
                Response::Exited(exit.clone()),
                r#"{"v":1,"type":"exited","exit_code":137,"exited_at_unix_nanos":1700000000123456789,"reason":"OOMKilled","message":""}"#.to_owned(),
            ),
            (
                Response::State(StateInfo {
                    status: ContainerStatus::Stopped,
                    pid: 42,
                    started_at_unix_nanos: Some(5),
                    exit: Some(exit),
                }),
                r#"{"v":1,"type":"state","status":"stopped","pid":42,"started_at_unix_nanos":5,"exit":{"exit_code":137,"exited_at_unix_nanos":1700000000123456789,"reason":"OOMKilled","message":""}}"#.to_owned(),
            ),
            (
                Response::Error(ErrorReply {
                    kind: ErrorKind::InvalidState,
                    message: "container abc is still running".into(),
                }),
                r#"{"v":1,"type":"error","kind":"invalid_state","message":"container abc is still running"}"#.to_owned(),
            ),
        ];
        for (response, wire) in cases {
            let line = encode_response(&response).unwrap();
            assert_eq!(std::str::from_utf8(&line).unwrap(), format!("{wire}\n"));
            assert_eq!(decode_response(&line).unwrap(), response);
        }
    }

    #[test]
    fn version_is_checked_before_the_body() {
        let err = decode_request(br#"{"v":2,"op":"teleport"}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::UnsupportedVersion { got: 2 }));
        let err = decode_request(br#"{"op":"start"}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::Decode { .. }));
        let err = decode_request(br#"{"v":1,"op":"teleport"}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::Decode { .. }));
        let err = decode_request(b"not json\r\n").unwrap_err();
        assert!(matches!(err, ProtocolError::Decode { .. }));
        // unknown extra fields are tolerated (forward compatible additions)
        assert_eq!(
            decode_request(br#"{"v":1,"op":"state","trace":"x"}"#).unwrap(),
            Request::State
        );
    }

    #[test]
    fn reasons_and_ready_lines() {
        assert_eq!(ExitReason::classify(0, false), ExitReason::Completed);
        assert_eq!(ExitReason::classify(3, false), ExitReason::Error);
        assert_eq!(ExitReason::classify(137, true), ExitReason::OomKilled);
        assert_eq!(ExitReason::classify(0, true), ExitReason::OomKilled);
        assert_eq!(ExitReason::OomKilled.as_str(), "OOMKilled");
        assert_eq!(parse_ready_line("ok\n"), Ok(()));
        assert_eq!(
            parse_ready_line("error: container x: bad spec\n"),
            Err("container x: bad spec".to_owned())
        );
        assert!(parse_ready_line("").is_err());
    }

    #[test]
    fn state_files_are_atomic_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit_file(dir.path()).unwrap(), None);
        let exit = ExitInfo {
            exit_code: 3,
            exited_at_unix_nanos: 7,
            reason: ExitReason::Error,
            message: String::new(),
        };
        write_exit_file(dir.path(), &exit).unwrap();
        let text = fs::read_to_string(dir.path().join(EXIT_FILE)).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"exit_code\":3,\"exited_at_unix_nanos\":7,\"reason\":\"Error\",\"message\":\"\"}\n"
        );
        assert_eq!(read_exit_file(dir.path()).unwrap(), Some(exit));
        let shim = ShimFile {
            id: "c1".into(),
            shim_pid: 10,
            init_pid: 11,
            shim_start_ticks: Some(99),
            init_start_ticks: None,
        };
        write_shim_file(dir.path(), &shim).unwrap();
        assert_eq!(read_shim_file(dir.path()).unwrap(), Some(shim));
        // no temporary files are left behind
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::write(dir.path().join(EXIT_FILE), b"{\"v\":9}").unwrap();
        assert!(matches!(
            read_exit_file(dir.path()),
            Err(ProtocolError::UnsupportedVersion { got: 9 })
        ));
    }

    #[test]
    fn start_ticks_from_proc_stat() {
        let stat =
            "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert!(process_start_ticks(std::process::id() as i32).is_some());
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn exec_result_roundtrip() {
        let r = ExecResult::from_output(5, b"out\n", b"\xff\x00", false, true, false);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"exit_code":5,"stdout_b64":"b3V0Cg==","stderr_b64":"/wA=","timed_out":false,"stdout_truncated":true,"stderr_truncated":false}"#
        );
        let back: ExecResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.stdout().unwrap(), b"out\n");
        assert_eq!(back.stderr().unwrap(), b"\xff\x00");
    }

    #[test]
    fn client_against_a_fake_shim() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_FILE);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut answers = vec![
                Response::Ok,
                Response::State(StateInfo {
                    status: ContainerStatus::Running,
                    pid: 7,
                    started_at_unix_nanos: None,
                    exit: None,
                }),
                Response::Error(ErrorReply {
                    kind: ErrorKind::InvalidState,
                    message: "container c1 is still running".into(),
                }),
            ]
            .into_iter();
            let mut seen = Vec::new();
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                    break;
                }
                seen.push(decode_request(&line).unwrap());
                match answers.next() {
                    Some(a) => reader
                        .get_mut()
                        .write_all(&encode_response(&a).unwrap())
                        .unwrap(),
                    None => break, // hang up without answering
                }
            }
            seen
        });
        let mut client = ShimClient::connect(&path).unwrap();
        client.start().unwrap();
        assert_eq!(client.state().unwrap().pid, 7);
        let err = client.shutdown().unwrap_err();
        assert_eq!(err.shim_kind(), Some(ErrorKind::InvalidState));
        assert_eq!(
            err.to_string(),
            "shim refused shutdown: container c1 is still running"
        );
        let err = client.reopen_log().unwrap_err();
        assert!(matches!(err, ProtocolError::Closed { .. }), "{err}");
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            vec![
                Request::Start,
                Request::State,
                Request::Shutdown,
                Request::ReopenLog
            ]
        );
    }

    #[test]
    fn client_call_times_out() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_FILE);
        let _listener = UnixListener::bind(&path).unwrap();
        let mut client =
            ShimClient::connect_with_timeout(&path, Some(Duration::from_millis(50))).unwrap();
        let err = client.wait(Some(Duration::from_millis(50))).unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }

    #[test]
    fn stream_exec_result_json() {
        let ran = StreamExecResult::exited(130);
        let json = serde_json::to_string(&ran).unwrap();
        assert_eq!(json, r#"{"exit_code":130,"error":null}"#);
        assert_eq!(
            serde_json::from_str::<StreamExecResult>(&json).unwrap(),
            ran
        );
        let failed = StreamExecResult::failed("container c1 is not running (status: stopped)");
        let json = serde_json::to_string(&failed).unwrap();
        assert_eq!(
            json,
            r#"{"exit_code":null,"error":"container c1 is not running (status: stopped)"}"#
        );
        assert_eq!(
            serde_json::from_str::<StreamExecResult>(&json).unwrap(),
            failed
        );
    }
}
