//! Support for the shim's end-to-end tests: busybox bundles, spawning `keelson-shim run`,
//! cleaning up cgroups. The tests need root; without it they print a notice and pass.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keelson_shim::protocol::{self, ShimClient, ShimFile};
use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Spec,
};
use tempfile::TempDir;

pub const SHIM: &str = env!("CARGO_BIN_EXE_keelson-shim");

/// Live test containers of this test binary: the shared `/keelson-test` parent cgroups are
/// removed only when the last one is dropped, never while another test is creating its own.
static LIVE: Mutex<usize> = Mutex::new(0);

/// Busybox applets linked into every test rootfs.
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "id", "head", "tr", "printf", "pwd", "true", "env", "grep",
    "unshare", "chmod", "hostname", "readlink", "mount", "mkdir", "stty", "tty", "yes",
];

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip (pass) a test when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A unique container id for this test process.
pub fn container_id(name: &str) -> String {
    format!("kst-{name}-{}", std::process::id())
}

/// Copy Debian's dynamic busybox, the libraries it links (per `ldd`) and one hard link per
/// applet into `rootfs`.
pub fn build_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let busybox = rootfs.join("bin/busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    let ldd = Command::new("ldd").arg("/bin/busybox").output().unwrap();
    assert!(ldd.status.success(), "ldd /bin/busybox failed");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = rootfs.join(path.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(path, &dest).unwrap();
    }
    for applet in APPLETS {
        fs::hard_link(&busybox, rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
}

/// A bundle (rootfs + config.json), a libcontainer root, a state dir and a log path, all in one
/// temporary directory; the container's cgroup is `/keelson-test/<id>`.
pub struct TestContainer {
    pub id: String,
    pub dir: TempDir,
    pub bundle: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub shim_pid: Option<i32>,
}

impl TestContainer {
    pub fn new(name: &str, args: &[&str]) -> Self {
        Self::with_spec(name, args, |_| {})
    }

    pub fn with_memory_limit(name: &str, args: &[&str], bytes: i64) -> Self {
        Self::with_spec(name, args, |spec| {
            let mut linux = spec.linux().clone().unwrap();
            let memory = LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .unwrap();
            linux.set_resources(Some(
                LinuxResourcesBuilder::default()
                    .memory(memory)
                    .build()
                    .unwrap(),
            ));
            spec.set_linux(Some(linux));
        })
    }

    pub fn with_spec(name: &str, args: &[&str], adjust: impl FnOnce(&mut Spec)) -> Self {
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let id = container_id(name);
        let dir = tempfile::Builder::new()
            .prefix("keelson-shim-test-")
            .tempdir()
            .unwrap();
        let bundle = dir.path().join("bundle");
        build_rootfs(&bundle.join("rootfs"));
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        let mut root = spec.root().clone().unwrap();
        root.set_path(bundle.join("rootfs"));
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        spec.set_hostname(Some(id.clone()));
        let default_linux = spec.linux().clone().unwrap();
        let namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ]
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().unwrap())
        .collect::<Vec<_>>();
        let mut linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .cgroups_path(PathBuf::from(format!("/keelson-test/{id}")))
            .build()
            .unwrap();
        linux.set_masked_paths(default_linux.masked_paths().clone());
        linux.set_readonly_paths(default_linux.readonly_paths().clone());
        linux.set_resources(default_linux.resources().clone());
        spec.set_linux(Some(linux));
        adjust(&mut spec);
        spec.save(bundle.join("config.json")).unwrap();

        let root = dir.path().join("libcontainer");
        let state_dir = dir.path().join("state");
        let log_path = dir.path().join("container.log");
        fs::create_dir_all(&root).unwrap();
        TestContainer {
            id,
            bundle,
            root,
            state_dir,
            log_path,
            shim_pid: None,
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.state_dir.join(protocol::SOCKET_FILE)
    }

    pub fn client(&self) -> ShimClient {
        ShimClient::connect(self.socket()).unwrap()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Run `keelson-shim run` the way the runtime will: readiness on the child's stdout
    /// (`--ready-fd 1`), stderr into `<dir>/shim.log`. Returns the readiness line.
    pub fn spawn_shim(&mut self, extra: &[&str]) -> String {
        let shim_log = fs::File::create(self.dir.path().join("shim.log")).unwrap();
        let mut child = Command::new(SHIM)
            .arg("run")
            .args(["--id", &self.id])
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--log-path")
            .arg(&self.log_path)
            .arg("--libcontainer-root")
            .arg(&self.root)
            .args(["--ready-fd", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .env("RUST_LOG", "debug")
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // The spawned process itself exits at once: 0 once it forked the real shim away, 1 when
        // it failed before that (the ready line carries the reason either way).
        let status = child.wait().unwrap();
        assert!(
            status.success() || line.starts_with("error: "),
            "shim launcher exited with {status}"
        );
        if let Ok(Some(ShimFile { shim_pid, .. })) = protocol::read_shim_file(&self.state_dir) {
            self.shim_pid = Some(shim_pid);
        }
        line
    }

    /// Spawn and require `ok`.
    pub fn start_shim(&mut self) -> ShimFile {
        let line = self.spawn_shim(&[]);
        assert_eq!(line, "ok\n", "shim log:\n{}", self.shim_log());
        protocol::read_shim_file(&self.state_dir).unwrap().unwrap()
    }

    pub fn shim_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The container's cgroup directories that exist, one per v1 controller.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.id)
    }

    /// libcontainer's state directory for the container.
    pub fn libcontainer_dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }

    /// Connect to the shim's attach socket (reads time out after 20 s).
    pub fn attach(&self) -> std::os::unix::net::UnixStream {
        let s = std::os::unix::net::UnixStream::connect(
            self.state_dir
                .join(keelson_shim::attach::ATTACH_SOCKET_FILE),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Run `keelson-shim exec` against this container.
    pub fn exec(&self, flags: &[&str], cmd: &[&str]) -> std::process::Output {
        Command::new(SHIM)
            .arg("exec")
            .arg("--libcontainer-root")
            .arg(&self.root)
            .args(["--id", &self.id])
            .args(flags)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // Best effort: ask the shim to stop everything, then make sure nothing is left.
        if let Ok(mut client) = ShimClient::connect(self.socket()) {
            let _ = client.kill(9, true);
            let _ = client.wait(Some(Duration::from_secs(5)));
            let _ = client.shutdown();
        }
        if let Some(pid) = self.shim_pid
            && process_alive(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        *live -= 1;
        remove_cgroups(&self.id, *live == 0);
    }
}

/// Existing `/sys/fs/cgroup/<controller>/keelson-test/<id>` directories.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let d = e.path().join("keelson-test").join(id);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Kill whatever is left in the container's cgroups and remove them (and the shared
/// `keelson-test` parents when `parents`).
pub fn remove_cgroups(id: &str, parents: bool) {
    for dir in cgroup_dirs(id) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // rmdir fails while another container (of another process) still uses the parent.
    if !parents {
        return;
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let _ = fs::remove_dir(e.path().join("keelson-test"));
        }
    }
}

/// Alive and not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// The parent pid of a process.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process group and session of a process.
pub fn group_and_session(pid: i32) -> Option<(i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CRI log records of a log file as (stream, tag, content).
pub fn records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "bad timestamp in {line:?}"
            );
            let stream = parts.next().unwrap().to_owned();
            let tag = parts.next().unwrap().to_owned();
            let content = parts.next().unwrap_or("").to_owned();
            (stream, tag, content)
        })
        .collect()
}

/// Send one attach frame.
pub fn send_frame(
    s: &mut std::os::unix::net::UnixStream,
    kind: keelson_shim::attach::FrameKind,
    payload: &[u8],
) {
    use std::io::Write;
    let mut buf = Vec::new();
    keelson_shim::attach::encode_frame(kind, payload, &mut buf);
    s.write_all(&buf).unwrap();
}

/// Every frame until the shim closes the connection: (Stdout bytes, Stderr bytes, exit code).
pub fn read_until_exit(s: &mut std::os::unix::net::UnixStream) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    use keelson_shim::attach::{self, FrameKind};
    use std::io::Read;
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((kind, range, used)) = attach::decode_frame(&buf).unwrap() {
            let payload = buf[range].to_vec();
            match kind {
                FrameKind::Stdout => out.extend_from_slice(&payload),
                FrameKind::Stderr => err.extend_from_slice(&payload),
                FrameKind::Exit => exit = Some(attach::decode_exit(&payload).unwrap()),
                other => panic!("unexpected frame {other:?} from the shim"),
            }
            buf.drain(..used);
        }
        match s.read(&mut chunk) {
            Ok(0) => return (out, err, exit),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading the attach socket: {e} (so far: {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}
