//! Linux capabilities: kernel numbering, name parsing (`NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`) and the
//! CRI add/drop rules applied on top of the default set.

use oci_spec::runtime::{Capabilities, Capability};

/// A capability name that no kernel knows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
}

/// Every capability in kernel order (the index is the capability's number, see `linux/capability.h`).
pub const ALL: [(Capability, &str); 41] = [
    (Capability::Chown, "CHOWN"),
    (Capability::DacOverride, "DAC_OVERRIDE"),
    (Capability::DacReadSearch, "DAC_READ_SEARCH"),
    (Capability::Fowner, "FOWNER"),
    (Capability::Fsetid, "FSETID"),
    (Capability::Kill, "KILL"),
    (Capability::Setgid, "SETGID"),
    (Capability::Setuid, "SETUID"),
    (Capability::Setpcap, "SETPCAP"),
    (Capability::LinuxImmutable, "LINUX_IMMUTABLE"),
    (Capability::NetBindService, "NET_BIND_SERVICE"),
    (Capability::NetBroadcast, "NET_BROADCAST"),
    (Capability::NetAdmin, "NET_ADMIN"),
    (Capability::NetRaw, "NET_RAW"),
    (Capability::IpcLock, "IPC_LOCK"),
    (Capability::IpcOwner, "IPC_OWNER"),
    (Capability::SysModule, "SYS_MODULE"),
    (Capability::SysRawio, "SYS_RAWIO"),
    (Capability::SysChroot, "SYS_CHROOT"),
    (Capability::SysPtrace, "SYS_PTRACE"),
    (Capability::SysPacct, "SYS_PACCT"),
    (Capability::SysAdmin, "SYS_ADMIN"),
    (Capability::SysBoot, "SYS_BOOT"),
    (Capability::SysNice, "SYS_NICE"),
    (Capability::SysResource, "SYS_RESOURCE"),
    (Capability::SysTime, "SYS_TIME"),
    (Capability::SysTtyConfig, "SYS_TTY_CONFIG"),
    (Capability::Mknod, "MKNOD"),
    (Capability::Lease, "LEASE"),
    (Capability::AuditWrite, "AUDIT_WRITE"),
    (Capability::AuditControl, "AUDIT_CONTROL"),
    (Capability::Setfcap, "SETFCAP"),
    (Capability::MacOverride, "MAC_OVERRIDE"),
    (Capability::MacAdmin, "MAC_ADMIN"),
    (Capability::Syslog, "SYSLOG"),
    (Capability::WakeAlarm, "WAKE_ALARM"),
    (Capability::BlockSuspend, "BLOCK_SUSPEND"),
    (Capability::AuditRead, "AUDIT_READ"),
    (Capability::Perfmon, "PERFMON"),
    (Capability::Bpf, "BPF"),
    (Capability::CheckpointRestore, "CHECKPOINT_RESTORE"),
];

/// The set an unprivileged container starts with: the same fourteen containerd's CRI plugin (and Docker) grant.
pub const DEFAULT: [Capability; 14] = [
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

/// Parses a capability name with or without the `CAP_` prefix, in any case.
pub fn parse(name: &str) -> Result<Capability, CapabilityError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALL.iter()
        .find(|(_, n)| *n == bare)
        .map(|(c, _)| *c)
        .ok_or_else(|| CapabilityError::Unknown(name.to_string()))
}

/// The kernel's name for `cap`, `CAP_` included.
pub fn name(cap: Capability) -> String {
    let bare = ALL
        .iter()
        .find(|(c, _)| *c == cap)
        .map_or("UNKNOWN", |(_, n)| n);
    format!("CAP_{bare}")
}

/// The capabilities a kernel whose `/proc/sys/kernel/cap_last_cap` reads `last_cap` knows; `None` = all of [`ALL`].
pub fn known_to_kernel(last_cap: Option<u32>) -> Vec<Capability> {
    let n = last_cap.map_or(ALL.len(), |l| (l as usize + 1).min(ALL.len()));
    ALL[..n].iter().map(|(c, _)| *c).collect()
}

/// Applies CRI `add_capabilities` / `drop_capabilities` to `base` in the order kubelet relies on:
/// `ALL` in add, then `ALL` in drop, then the single adds, then the single drops
/// (so add `ALL` + drop `CHOWN` is everything but CHOWN, and drop `ALL` + add `NET_ADMIN` is only NET_ADMIN).
pub fn apply_cri(
    base: &[Capability],
    add: &[String],
    drop: &[String],
    all: &[Capability],
) -> Result<Capabilities, CapabilityError> {
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut set: Capabilities = base.iter().copied().collect();
    if add.iter().any(is_all) {
        set.extend(all.iter().copied());
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for a in add.iter().filter(|s| !is_all(s)) {
        set.insert(parse(a)?);
    }
    for d in drop.iter().filter(|s| !is_all(s)) {
        set.remove(&parse(d)?);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_kernel_numbering() {
        assert_eq!(ALL[0].0, Capability::Chown);
        assert_eq!(ALL[21].0, Capability::SysAdmin);
        assert_eq!(ALL[40].0, Capability::CheckpointRestore);
        for (c, n) in ALL {
            // oci-spec's own Display is the bare SCREAMING_SNAKE_CASE name.
            assert_eq!(c.to_string(), n);
        }
        assert_eq!(known_to_kernel(Some(37)).len(), 38);
        assert_eq!(known_to_kernel(Some(99)).len(), 41);
    }

    #[test]
    fn parse_accepts_prefix_and_case() {
        assert_eq!(parse("NET_ADMIN").unwrap(), Capability::NetAdmin);
        assert_eq!(parse("CAP_NET_ADMIN").unwrap(), Capability::NetAdmin);
        assert_eq!(parse("cap_sys_ptrace").unwrap(), Capability::SysPtrace);
        assert_eq!(
            parse("NET_FOO").unwrap_err(),
            CapabilityError::Unknown("NET_FOO".into())
        );
        assert_eq!(name(Capability::AuditWrite), "CAP_AUDIT_WRITE");
    }
}
