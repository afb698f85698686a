//! End-to-end tests of `keelson-shim exec` in a running busybox container (root only).

mod common;

use std::time::{Duration, Instant};

use common::TestContainer;
use keelson_shim::protocol::ExecResult;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

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

/// The runtime's default seccomp profile for the default capabilities
/// (`fixtures/default-seccomp.json`, printed by keelson-runtime's ignored test
/// `dump_default_seccomp_profile`) in libcontainer's reading, as the runtime writes it into
/// config.json (`adapt_for_libcontainer`): `SCMP_CMP_MASKED_EQ` operands swapped.
fn default_profile() -> LinuxSeccomp {
    let mut profile: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/default-seccomp.json")).unwrap();
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        let Some(args) = rule.get_mut("args").and_then(|a| a.as_array_mut()) else {
            continue;
        };
        for arg in args {
            if arg["op"] == "SCMP_CMP_MASKED_EQ" {
                let mask = arg["value"].clone();
                arg["value"] = arg.get("valueTwo").cloned().unwrap_or(0.into());
                arg["valueTwo"] = mask;
            }
        }
    }
    serde_json::from_value(profile).unwrap()
}

/// critest's profiles in one: everything allowed but chmod and sethostname (EPERM).
fn block_chmod_and_hostname_profile() -> LinuxSeccomp {
    serde_json::from_str(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2", "sethostname"],
                          "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap()
}

/// The runtime's default capability set (runtime/src/container/caps.rs `DEFAULT`).
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Bounding, effective and permitted `list`; no inheritable or ambient (like the runtime).
fn caps(list: &[Capability]) -> LinuxCapabilities {
    let set: Capabilities = list.iter().copied().collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    caps
}

/// Container process settings for a test.
struct Settings {
    caps: Vec<Capability>,
    no_new_privileges: Option<bool>,
    seccomp: Option<LinuxSeccomp>,
    user: Option<(u32, u32, Vec<u32>)>,
    oom_score_adj: Option<i32>,
}

fn container_with(name: &str, s: Settings) -> TestContainer {
    TestContainer::with_spec(name, &["sleep", "1000"], move |spec| {
        let mut process = spec.process().clone().unwrap();
        process.set_capabilities(Some(caps(&s.caps)));
        process.set_no_new_privileges(s.no_new_privileges);
        process.set_oom_score_adj(s.oom_score_adj);
        if let Some((uid, gid, groups)) = s.user {
            let mut user = process.user().clone();
            user.set_uid(uid)
                .set_gid(gid)
                .set_additional_gids(Some(groups));
            process.set_user(user);
        }
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(s.seccomp);
        spec.set_linux(Some(linux));
    })
}

/// `/proc/PID/status` fields an exec'd process must share with the container's init.
const SAME_STATUS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

/// Compares, from inside the container, the init (pid 1) with the exec'd shell (`$$`): the
/// status fields above, cgroups, rlimits, oom_score_adj and every namespace.
const COMPARE: &str = "for f in status cgroup limits oom_score_adj; do \
       cat /proc/1/$f; echo ---; cat /proc/$$/$f; echo ---; done; \
     for n in ipc uts net pid mnt cgroup user time; do \
       echo $n $(readlink /proc/1/ns/$n) $(readlink /proc/$$/ns/$n); done";

fn status_fields(status: &str) -> Vec<(String, String)> {
    SAME_STATUS
        .iter()
        .map(|key| {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .unwrap_or_else(|| panic!("no {key} in {status}"));
            (key.to_string(), value.trim().to_owned())
        })
        .collect()
}

/// Asserts the exec'd process matches the init; returns the init's status fields.
fn assert_same_as_init(c: &TestContainer) -> Vec<(String, String)> {
    let r = result(&c.exec(&[], &["sh", "-c", COMPARE]));
    let out = String::from_utf8(r.stdout().unwrap()).unwrap();
    assert_eq!(r.exit_code, 0, "{out} {:?}", r.stderr());
    let sections: Vec<&str> = out.split("---\n").collect();
    assert_eq!(sections.len(), 9, "{out}");
    let init_status = status_fields(sections[0]);
    assert_eq!(init_status, status_fields(sections[1]), "status");
    for (i, what) in [(2, "cgroup"), (4, "limits"), (6, "oom_score_adj")] {
        assert!(!sections[i].trim().is_empty(), "{what}: {out}");
        assert_eq!(sections[i], sections[i + 1], "{what}");
    }
    let namespaces: Vec<&str> = sections[8].lines().collect();
    assert_eq!(namespaces.len(), 8, "{out}");
    for line in namespaces {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(
            parts.len() == 3 && parts[1].contains(":[") && parts[1] == parts[2],
            "namespace differs: {line}"
        );
    }
    init_status
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    &fields.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn exec_gets_the_default_seccomp_profile_like_the_init() {
    require_root!();
    // noNewPrivileges absent (the runtime's reading of false): the filter is loaded while
    // CAP_SYS_ADMIN is still held.
    let mut c = container_with(
        "seccomp-default",
        Settings {
            caps: DEFAULT_CAPS.to_vec(),
            no_new_privileges: None,
            seccomp: Some(default_profile()),
            user: None,
            oom_score_adj: Some(300),
        },
    );
    c.start_shim();
    c.client().start().unwrap();

    // critest: `grep ecc /proc/self/status` through ExecSync.
    let r = result(&c.exec(&[], &["grep", "Seccomp:", "/proc/self/status"]));
    assert_eq!(r.stdout().unwrap(), b"Seccomp:\t2\n", "{:?}", r.stderr());
    // The default profile refuses new namespaces to a container without CAP_SYS_ADMIN.
    let r = result(&c.exec(&[], &["unshare", "-U", "true"]));
    assert_ne!(
        r.exit_code, 0,
        "unshare -U succeeded under the default profile"
    );
    let stderr = String::from_utf8(r.stderr().unwrap()).unwrap();
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    let init = assert_same_as_init(&c);
    assert_eq!(field(&init, "Seccomp"), "2");
    assert_eq!(field(&init, "NoNewPrivs"), "0");
    assert_eq!(field(&init, "CapBnd"), "00000000a80425fb");
}

#[test]
fn exec_as_a_user_with_groups_and_no_new_privs_matches_the_init() {
    require_root!();
    // noNewPrivileges true: no_new_privs first, the filter last before execve.
    let mut c = container_with(
        "seccomp-user",
        Settings {
            caps: vec![Capability::Chown, Capability::Kill, Capability::SysAdmin],
            no_new_privileges: Some(true),
            seccomp: Some(default_profile()),
            user: Some((1000, 1001, vec![10, 20])),
            oom_score_adj: None,
        },
    );
    c.start_shim();
    c.client().start().unwrap();

    let r = result(&c.exec(&[], &["sh", "-c", "id -u; id -g; id -G"]));
    assert_eq!(
        String::from_utf8(r.stdout().unwrap()).unwrap(),
        "1000\n1001\n1001 10 20\n",
        "{:?}",
        r.stderr()
    );
    let init = assert_same_as_init(&c);
    assert_eq!(field(&init, "Seccomp"), "2");
    assert_eq!(field(&init, "NoNewPrivs"), "1");
    assert_eq!(field(&init, "Groups"), "10 20");
    assert_eq!(field(&init, "CapBnd"), "0000000000200021");
    // A non-root user keeps no capabilities across execve (no ambient set).
    assert_eq!(field(&init, "CapEff"), "0000000000000000");
}

#[test]
fn exec_is_denied_what_the_containers_profile_blocks() {
    require_root!();
    // critest's Localhost profiles: chmod blocked; sethostname blocked despite CAP_SYS_ADMIN.
    let mut with_sys_admin = DEFAULT_CAPS.to_vec();
    with_sys_admin.push(Capability::SysAdmin);
    let mut c = container_with(
        "seccomp-block",
        Settings {
            caps: with_sys_admin,
            no_new_privileges: None,
            seccomp: Some(block_chmod_and_hostname_profile()),
            user: None,
            oom_score_adj: None,
        },
    );
    c.start_shim();
    c.client().start().unwrap();

    let r = result(&c.exec(&[], &["chmod", "400", "/"]));
    assert_ne!(r.exit_code, 0);
    let stderr = String::from_utf8(r.stderr().unwrap()).unwrap();
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    let r = result(&c.exec(&[], &["hostname", "changed"]));
    assert_ne!(r.exit_code, 0);
    let stderr = String::from_utf8(r.stderr().unwrap()).unwrap();
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    let r = result(&c.exec(&[], &["hostname"]));
    assert_eq!(
        String::from_utf8(r.stdout().unwrap()).unwrap(),
        format!("{}\n", c.id)
    );

    let init = assert_same_as_init(&c);
    assert_eq!(field(&init, "Seccomp"), "2");
}

#[test]
fn exec_without_a_profile_is_unfiltered_like_the_init() {
    require_root!();
    let mut with_sys_admin = DEFAULT_CAPS.to_vec();
    with_sys_admin.push(Capability::SysAdmin);
    let mut c = container_with(
        "seccomp-none",
        Settings {
            caps: with_sys_admin,
            no_new_privileges: None,
            seccomp: None,
            user: None,
            oom_score_adj: None,
        },
    );
    c.start_shim();
    c.client().start().unwrap();
    // critest: unconfined + CAP_SYS_ADMIN may set the hostname.
    let r = result(&c.exec(&[], &["sh", "-c", "hostname changed && hostname"]));
    assert_eq!(r.stdout().unwrap(), b"changed\n", "{:?}", r.stderr());
    let init = assert_same_as_init(&c);
    assert_eq!(field(&init, "Seccomp"), "0");
}
