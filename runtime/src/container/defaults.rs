//! What every container gets unless the CRI request says otherwise: the base mounts, masked and read-only
//! paths, device cgroup rules and `PATH`, chosen to match what kubelet expects from containerd's CRI plugin.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, Mount};
use std::path::Path;

/// `PATH` when neither the image nor the CRI config sets one.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from unprivileged containers (a bind of `/dev/null`, or an empty read-only tmpfs for
/// directories): kernel interfaces that leak host state or allow host-wide actions.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths remounted read-only for unprivileged containers.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Size of the `/dev` tmpfs and of the fallback `/dev/shm` (64 MiB, as Docker and containerd).
pub const TMPFS_SIZE: &str = "size=65536k";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// A mount entry; `source` defaults to the filesystem type, as for pseudo filesystems.
pub fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.into()))
        .set_options(Some(strings(options)));
    m
}

/// A bind mount of a host path with the given extra options (`rbind` first).
pub fn bind(destination: &Path, source: &Path, options: &[&str]) -> Mount {
    let mut opts = vec!["rbind".to_string()];
    opts.extend(options.iter().map(|s| (*s).to_string()));
    let mut m = Mount::default();
    m.set_destination(destination.to_path_buf())
        .set_typ(Some("bind".into()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(opts));
    m
}

/// The pseudo filesystems every container has. `/sys` and `/sys/fs/cgroup` are read-only unless privileged.
/// `/dev/shm` is not included: it comes from the sandbox (see [`shm_tmpfs`] for the fallback).
pub fn base_mounts(privileged: bool) -> Vec<Mount> {
    let ro_or_rw = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", TMPFS_SIZE],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_or_rw],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro_or_rw],
        ),
    ]
}

/// `/dev/shm` when the sandbox has no shared one: a private 64 MiB tmpfs.
pub fn shm_tmpfs() -> Mount {
    mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", TMPFS_SIZE],
    )
}

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    r
}

/// Device cgroup rules of an unprivileged container: deny everything, then allow `mknod` of any node
/// (opening it stays denied) and the standard character devices a process expects:
/// null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9, tty 5:0, ptmx 5:2 and the pts slaves 136:*.
pub fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    vec![
        rule(false, A, None, None, "rwm"),
        rule(true, C, None, None, "m"),
        rule(true, B, None, None, "m"),
        rule(true, C, Some(1), Some(3), "rwm"),
        rule(true, C, Some(1), Some(5), "rwm"),
        rule(true, C, Some(1), Some(7), "rwm"),
        rule(true, C, Some(1), Some(8), "rwm"),
        rule(true, C, Some(1), Some(9), "rwm"),
        rule(true, C, Some(5), Some(0), "rwm"),
        rule(true, C, Some(5), Some(2), "rwm"),
        rule(true, C, Some(136), None, "rwm"),
    ]
}

/// The single rule of a privileged container: every device, every access.
pub fn privileged_device_rules() -> Vec<LinuxDeviceCgroup> {
    vec![rule(true, LinuxDeviceType::A, None, None, "rwm")]
}

/// An allow rule for one device.
pub fn allow_device(
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    access: &str,
) -> LinuxDeviceCgroup {
    rule(true, typ, Some(major), Some(minor), access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_follows_privilege() {
        let opts = |ms: &[Mount], d: &str| {
            ms.iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap()
                .options()
                .clone()
                .unwrap()
        };
        assert!(opts(&base_mounts(false), "/sys").contains(&"ro".to_string()));
        assert!(opts(&base_mounts(true), "/sys").contains(&"rw".to_string()));
        assert!(opts(&base_mounts(false), "/sys/fs/cgroup").contains(&"ro".to_string()));
    }

    #[test]
    fn device_rules_start_with_deny_all() {
        let r = device_rules();
        assert!(!r[0].allow());
        assert_eq!(r[0].to_string(), "a *:* rwm");
        assert!(r.iter().any(|r| r.to_string() == "c 136:* rwm"));
    }
}
