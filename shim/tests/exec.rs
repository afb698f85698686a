//! End-to-end tests of `keelson-shim exec` in a running busybox container (root only).

mod common;

use std::time::{Duration, Instant};

use common::TestContainer;
use keelson_shim::protocol::ExecResult;

fn result(out: &std::process::Output) -> ExecResult {
    assert!(
        out.status.success(),
        "exec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad exec output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn exec_runs_in_the_container() {
    require_root!();
    let mut c = TestContainer::with_spec("exec", &["sleep", "1000"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut env = process.env().clone().unwrap_or_default();
        env.push("FROM_SPEC=yes".into());
        process.set_env(Some(env));
        spec.set_process(Some(process));
    });
    let shim = c.start_shim();
    let mut client = c.client();
    client.start().unwrap();

    let r = result(&c.exec(&[], &["sh", "-c", "echo out; echo err >&2; exit 5"]));
    assert_eq!(r.exit_code, 5);
    assert_eq!(r.stdout().unwrap(), b"out\n");
    assert_eq!(r.stderr().unwrap(), b"err\n");
    assert!(!r.timed_out && !r.stdout_truncated && !r.stderr_truncated);

    // The container's env and hostname; --env overrides/adds, --cwd sets the directory.
    let r = result(&c.exec(
        &["--env", "EXTRA=1", "--cwd", "/tmp"],
        &[
            "sh",
            "-c",
            "echo $FROM_SPEC $EXTRA $(pwd) $(cat /proc/sys/kernel/hostname) $(id -u)",
        ],
    ));
    assert_eq!(r.exit_code, 0, "{:?}", r.stderr());
    assert_eq!(
        String::from_utf8(r.stdout().unwrap()).unwrap(),
        format!("yes 1 /tmp {} 0\n", c.id)
    );

    // Same pid namespace as the init (pid 1 is `sleep`), and the same cgroup.
    let r = result(&c.exec(&[], &["cat", "/proc/1/cmdline"]));
    assert_eq!(r.stdout().unwrap(), b"sleep\x001000\x00");
    let procs = c
        .cgroup_dirs()
        .into_iter()
        .find(|d| d.to_string_lossy().contains("/memory/"))
        .map(|d| d.join("cgroup.procs"))
        .unwrap();
    let r = result(&c.exec(&[], &["sh", "-c", "echo $$; sleep 0.3"]));
    let exec_pid_in_ns: i32 = String::from_utf8(r.stdout().unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(exec_pid_in_ns > 1);
    // (the exec'd pid is gone by now; check a running one is listed in the container's cgroup)
    let handle = {
        let c_root = c.root.clone();
        let id = c.id.clone();
        std::thread::spawn(move || {
            std::process::Command::new(common::SHIM)
                .arg("exec")
                .arg("--libcontainer-root")
                .arg(c_root)
                .args(["--id", &id, "--", "sleep", "2"])
                .output()
                .unwrap()
        })
    };
    let listed = common::eventually(Duration::from_secs(5), || {
        let n = std::fs::read_to_string(&procs).ok()?.lines().count();
        (n >= 2).then_some(n)
    });
    assert!(
        listed.is_some(),
        "exec process joins the container's cgroup"
    );
    assert_eq!(result(&handle.join().unwrap()).exit_code, 0);

    // Timeout: killed at the deadline.
    let t0 = Instant::now();
    let r = result(&c.exec(&["--timeout-secs", "1"], &["sleep", "100"]));
    let took = t0.elapsed();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, 137);
    assert!(took < Duration::from_millis(2500), "took {took:?}");

    // Output cap: 16 MiB kept, the rest reported as truncated.
    let r = result(&c.exec(&[], &["sh", "-c", "head -c 17000000 /dev/zero"]));
    assert_eq!(r.exit_code, 0);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout().unwrap().len(), 16 * 1024 * 1024);

    // A command that does not exist is an exec failure, not a result.
    let out = c.exec(&[], &["/no/such/binary"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "keelson-shim: failed to exec in container {}",
            c.id
        )) && last.contains("/no/such/binary"),
        "{stderr}"
    );

    // The container itself was not disturbed.
    assert!(common::process_alive(shim.init_pid));
    client.kill(9, false).unwrap();
    client.wait(Some(Duration::from_secs(20))).unwrap();

    // Exec into a stopped container fails with a reason.
    let out = c.exec(&[], &["true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&c.id),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    client.shutdown().unwrap();
}
