//! Seccomp: keelson's own default profile (`RuntimeDefault`), loading `Localhost` profiles written in the
//! OCI or Docker JSON format, and an adapter for libcontainer's argument order.
//!
//! # The default profile
//!
//! Deny by default with `EPERM`, then allow by name. The names come from the kernel's syscall tables
//! (`arch/x86/entry/syscalls/syscall_{64,32}.tbl`, `include/uapi/asm-generic/unistd.h` for arm64, and the
//! arm32 table for its compat names), sorted into:
//!
//! * allowed: what ordinary programs use (files, memory, signals, sockets, time reads, IPC, scheduling,
//!   id changes that the kernel already checks against the container's capabilities, ...);
//! * allowed only with a capability, because they are the kernel's gate to host-wide state and the
//!   capability is what a pod spec uses to opt in: `CAP_SYS_ADMIN` (mount API, `pivot_root`, `setns`,
//!   namespace-creating `clone`/`unshare`, `clone3`, `fanotify_init`), `CAP_SYS_PTRACE` (`ptrace`,
//!   `process_vm_*`, `kcmp`, `pidfd_getfd`, `process_madvise`), `CAP_SYS_TIME` (setting clocks),
//!   `CAP_SYSLOG` (`syslog`), `CAP_SYS_TTY_CONFIG` (`vhangup`);
//! * never allowed ([`BLOCKED`]): not namespaced and dangerous whatever the capabilities (kexec, modules,
//!   reboot, swap, bpf, perf, userfaultfd, the kernel keyring, port I/O, accounting, quotas, file handles,
//!   io_uring) or obsolete.
//!
//! Without `CAP_SYS_ADMIN`, `clone` and `unshare` are allowed only when no `CLONE_NEW*` bit is set, and
//! `clone3` fails with `ENOSYS` (its flags live in memory seccomp cannot read) so libc falls back to
//! `clone`. `personality` is allowed only for the harmless personas.
//!
//! Specs carry the OCI meaning of `SCMP_CMP_MASKED_EQ`; youki's libcontainer reads its operands the other
//! way round, see [`for_libcontainer`].

use crate::container::caps as capability;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;
use std::collections::BTreeSet;

/// Why a seccomp profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("invalid seccomp profile: {0}")]
    Parse(String),
    #[error("seccomp profile has no entry for this host's architecture {0}")]
    NoArchitecture(&'static str),
}

/// The host architectures keelson ships a default profile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    X86_64,
    Aarch64,
}

impl HostArch {
    /// This machine's architecture, if it is one of ours.
    pub fn current() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }

    /// The native ABI first, then the compat ABIs its kernel can also run.
    pub fn scmp_arches(self) -> Vec<Arch> {
        match self {
            Self::X86_64 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            Self::Aarch64 => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        }
    }

    /// Names Docker-format profiles use in `includes.arches` / `excludes.arches` for this host.
    fn profile_names(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["amd64", "x86_64"],
            Self::Aarch64 => &["arm64", "aarch64"],
        }
    }
}

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
/// `clone(2)` cannot take `CLONE_NEWTIME` (0x80 is inside its exit-signal byte).
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// What `unshare(2)` must not be given: the above plus `CLONE_NEWTIME`.
pub const UNSHARE_NAMESPACE_FLAGS: u64 = CLONE_NAMESPACE_FLAGS | 0x80;

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
pub const SAFE_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Generic syscalls every architecture has (asm-generic names), allowed for everyone.
#[rustfmt::skip]
const COMMON: &[&str] = &[
    "accept", "accept4", "adjtimex", "bind", "brk", "cachestat", "capget", "capset", "chdir", "chroot",
    "clock_adjtime", "clock_getres", "clock_gettime", "clock_nanosleep", "close", "close_range", "connect",
    "copy_file_range", "dup", "dup3", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync",
    "fgetxattr", "file_getattr", "file_setattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat",
    "fstatfs", "fsync", "ftruncate", "futex", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake",
    "get_mempolicy", "get_robust_list", "getcpu", "getcwd", "getdents64", "getegid", "geteuid", "getgid",
    "getgroups", "getitimer", "getpeername", "getpgid", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresuid", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getxattr", "getxattrat", "inotify_add_watch", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit",
    "ioctl", "ioprio_get", "ioprio_set", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lgetxattr", "linkat", "listen", "listmount", "listxattr", "listxattrat",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lsm_get_self_attr", "lsm_list_modules",
    "lsm_set_self_attr", "madvise", "map_shadow_stack", "mbind", "membarrier", "memfd_create", "memfd_secret",
    "migrate_pages", "mincore", "mkdirat", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "move_pages",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink",
    "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "openat", "openat2", "pidfd_open", "pidfd_send_signal", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "ppoll", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlinkat",
    "readv", "recvfrom", "recvmmsg", "recvmsg", "remap_file_pages", "removexattr", "removexattrat", "renameat",
    "renameat2", "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "semctl", "semget", "semop", "semtimedop", "sendfile",
    "sendmmsg", "sendmsg", "sendto", "set_mempolicy", "set_mempolicy_home_node", "set_robust_list",
    "set_tid_address", "setdomainname", "setfsgid", "setfsuid", "setgid", "setgroups", "sethostname",
    "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid", "setrlimit",
    "setsid", "setsockopt", "setuid", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd4", "socket", "socketpair", "splice", "statfs", "statmount", "statx",
    "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "times", "tkill", "truncate", "umask", "uname", "unlinkat", "utimensat", "vmsplice",
    "wait4", "waitid", "write", "writev",
];

/// Pre-`*at` syscalls that x86_64, i386 and arm32 still have (arm64 does not).
#[rustfmt::skip]
const LEGACY: &[&str] = &[
    "access", "alarm", "chmod", "chown", "creat", "dup2", "epoll_create", "epoll_wait", "eventfd", "fork",
    "futimesat", "getdents", "getpgrp", "inotify_init", "lchown", "link", "lstat", "mkdir", "mknod", "open",
    "pause", "pipe", "poll", "readlink", "rename", "rmdir", "select", "signalfd", "stat", "symlink", "time",
    "unlink", "utime", "utimes", "vfork",
];

/// 32-bit ABI names shared by i386 and arm32: 32-bit uid calls, 64-bit file offsets, `*_time64` (y2038).
#[rustfmt::skip]
const COMPAT32: &[&str] = &[
    "_llseek", "_newselect", "chown32", "clock_adjtime64", "clock_getres_time64", "clock_gettime64",
    "clock_nanosleep_time64", "fchown32", "fcntl64", "fstat64", "fstatat64", "fstatfs64", "ftruncate64",
    "futex_time64", "getegid32", "geteuid32", "getgid32", "getgroups32", "getresgid32", "getresuid32",
    "getuid32", "io_pgetevents_time64", "lchown32", "lstat64", "mmap2", "mq_timedreceive_time64",
    "mq_timedsend_time64", "nice", "ppoll_time64", "pselect6_time64", "recvmmsg_time64",
    "rt_sigtimedwait_time64", "sched_rr_get_interval_time64", "semtimedop_time64", "sendfile64", "setfsgid32",
    "setfsuid32", "setgid32", "setgroups32", "setregid32", "setresgid32", "setresuid32", "setreuid32",
    "setuid32", "sigaction", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "stat64", "statfs64",
    "timer_gettime64", "timer_settime64", "timerfd_gettime64", "timerfd_settime64", "truncate64", "ugetrlimit",
    "utimensat_time64",
];

/// x86-only: TLS and LDT setup (Wine, old binaries), uretprobe trampolines, i386 multiplexers and old calls.
#[rustfmt::skip]
const X86_ONLY: &[&str] = &[
    "arch_prctl", "fadvise64_64", "get_thread_area", "ipc", "modify_ldt", "oldfstat", "oldlstat", "oldolduname",
    "oldstat", "olduname", "readdir", "set_thread_area", "sgetmask", "signal", "socketcall", "ssetmask",
    "uretprobe", "waitpid",
];

/// arm32-only: its TLS and cache calls and its argument-reordered fadvise/sync_file_range.
#[rustfmt::skip]
const ARM_ONLY: &[&str] = &[
    "arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2",
];

/// Allowed only when the container holds `CAP_SYS_ADMIN` (the kernel's own gate for all of them).
#[rustfmt::skip]
const WITH_SYS_ADMIN: &[&str] = &[
    "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "mount", "mount_setattr",
    "move_mount", "open_tree", "open_tree_attr", "pivot_root", "setns", "umount", "umount2", "unshare",
];

/// Allowed only with `CAP_SYS_PTRACE`: reading or changing another process.
#[rustfmt::skip]
const WITH_SYS_PTRACE: &[&str] = &[
    "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace",
];

/// Allowed only with `CAP_SYS_TIME`: setting the (not namespaced) system clocks.
const WITH_SYS_TIME: &[&str] = &["clock_settime", "clock_settime64", "settimeofday", "stime"];

/// Never allowed by the default profile, whatever the capabilities (documentation and tests; the default
/// action denies them anyway).
#[rustfmt::skip]
pub const BLOCKED: &[&str] = &[
    // Replace or extend the running kernel, or stop the machine.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "query_module", "get_kernel_syms", "reboot",
    // Host-wide resources that are not namespaced.
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "nfsservctl", "lookup_dcookie", "_sysctl", "sysfs",
    "ustat", "uselib", "bdflush",
    // Large kernel attack surfaces: eBPF, perf, userfaultfd, the (not namespaced) keyring, io_uring.
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register",
    // Raw port I/O and virtual 8086 mode.
    "iopl", "ioperm", "vm86", "vm86old",
    // Opening files by handle bypasses path-based confinement.
    "open_by_handle_at", "name_to_handle_at",
    // Never implemented or long removed.
    "afs_syscall", "break", "ftime", "getpmsg", "gtty", "idle", "lock", "mpx", "prof", "profil", "putpmsg",
    "security", "stty", "tuxcall", "ulimit", "vserver", "epoll_ctl_old", "epoll_wait_old",
];

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names)
        .set_action(action)
        .set_errno_ret(errno)
        .set_args(if args.is_empty() { None } else { Some(args) });
    s
}

/// An OCI argument condition. For `SCMP_CMP_MASKED_EQ`, `value` is the mask and `value_two` the expected
/// result, as runc and crun read them.
fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // Every field has a default, so building cannot fail.
    b.build().expect("LinuxSeccompArg has no required fields")
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_string()).collect()
}

/// keelson's `RuntimeDefault` profile for a container holding `caps` (its bounding set) on `arch`.
pub fn default_profile(arch: HostArch, caps: &Capabilities) -> LinuxSeccomp {
    let has = |c: Capability| caps.contains(&c);
    let mut allowed: BTreeSet<&str> = COMMON
        .iter()
        .chain(LEGACY)
        .chain(COMPAT32)
        .copied()
        .collect();
    allowed.extend(match arch {
        HostArch::X86_64 => X86_ONLY,
        HostArch::Aarch64 => ARM_ONLY,
    });
    let gated: [(Capability, &[&str]); 5] = [
        (Capability::SysAdmin, WITH_SYS_ADMIN),
        (Capability::SysPtrace, WITH_SYS_PTRACE),
        (Capability::SysTime, WITH_SYS_TIME),
        (Capability::Syslog, &["syslog"]),
        (Capability::SysTtyConfig, &["vhangup"]),
    ];
    for (cap, names) in gated {
        if has(cap) {
            allowed.extend(names);
        }
    }
    let mut rules = vec![syscall(
        owned(&allowed.into_iter().collect::<Vec<_>>()),
        LinuxSeccompAction::ScmpActAllow,
        None,
        vec![],
    )];
    if !has(Capability::SysAdmin) {
        // x86_64, i386, arm and arm64 all pass clone's flags in argument 0.
        let no_ns = |mask| vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, mask, Some(0))];
        rules.push(syscall(
            owned(&["clone"]),
            LinuxSeccompAction::ScmpActAllow,
            None,
            no_ns(CLONE_NAMESPACE_FLAGS),
        ));
        rules.push(syscall(
            owned(&["unshare"]),
            LinuxSeccompAction::ScmpActAllow,
            None,
            no_ns(UNSHARE_NAMESPACE_FLAGS),
        ));
        rules.push(syscall(
            owned(&["clone3"]),
            LinuxSeccompAction::ScmpActErrno,
            Some(ENOSYS),
            vec![],
        ));
    }
    for p in SAFE_PERSONALITIES {
        rules.push(syscall(
            owned(&["personality"]),
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, p, None)],
        ));
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(EPERM))
        .set_architectures(Some(arch.scmp_arches()))
        .set_syscalls(Some(rules));
    profile
}

/// A profile file: the OCI `linux.seccomp` object, or Docker's format, which adds `archMap`, singular
/// `name`, and per-rule `includes`/`excludes` conditions on capabilities and architectures.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMapEntry>>,
    #[serde(default)]
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    listener_path: Option<std::path::PathBuf>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<ProfileSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    // `minKernel` is accepted and ignored: nodes run kernels newer than any profile's minimum.
}

/// Parses a `Localhost` profile for a container holding `caps` on `arch`, evaluating Docker-format
/// conditions (an unknown capability name in a condition simply never matches).
pub fn parse_profile(
    json: &str,
    arch: HostArch,
    caps: &Capabilities,
) -> Result<LinuxSeccomp, SeccompError> {
    let file: ProfileFile =
        serde_json::from_str(json).map_err(|e| SeccompError::Parse(e.to_string()))?;
    let arch_names = arch.profile_names();
    let has_cap = |name: &String| capability::parse(name).is_ok_and(|c| caps.contains(&c));
    let on_arch = |names: &[String]| names.iter().any(|n| arch_names.contains(&n.as_str()));

    let architectures = match (&file.arch_map, file.architectures) {
        (Some(map), _) if !map.is_empty() => {
            let native = arch.scmp_arches()[0];
            let entry = map
                .iter()
                .find(|e| e.architecture == native)
                .ok_or(SeccompError::NoArchitecture(arch_names[0]))?;
            let mut v = vec![entry.architecture];
            v.extend(entry.sub_architectures.iter().copied());
            Some(v)
        }
        (_, a) => a,
    };

    let mut syscalls = Vec::new();
    for s in file.syscalls.unwrap_or_default() {
        let inc = &s.includes;
        let exc = &s.excludes;
        if (!inc.arches.is_empty() && !on_arch(&inc.arches))
            || (!inc.caps.is_empty() && !inc.caps.iter().all(has_cap))
            || on_arch(&exc.arches)
            || exc.caps.iter().any(has_cap)
        {
            continue;
        }
        let mut names = s.names;
        names.extend(s.name);
        if names.is_empty() {
            return Err(SeccompError::Parse("a syscalls entry has no names".into()));
        }
        syscalls.push(syscall(
            names,
            s.action,
            s.errno_ret,
            s.args.unwrap_or_default(),
        ));
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(file.default_action)
        .set_default_errno_ret(file.default_errno_ret)
        .set_architectures(architectures)
        .set_flags(file.flags)
        .set_listener_path(file.listener_path)
        .set_listener_metadata(file.listener_metadata)
        .set_syscalls(if syscalls.is_empty() {
            None
        } else {
            Some(syscalls)
        });
    Ok(profile)
}

/// The same profile with every `SCMP_CMP_MASKED_EQ` condition's operands swapped for youki's libcontainer.
///
/// runc and crun read `{"value": mask, "valueTwo": expected}` (`(arg & value) == valueTwo`), which is what
/// this module writes and what Docker-format profiles mean. libcontainer 0.7 hands libseccomp
/// `valueTwo` as the mask and `value` as the expected value; libseccomp masks both sides, so an unadapted
/// `{"value": CLONE_NEW*, "valueTwo": 0}` becomes `(arg & 0) == 0`, always true, and containers may create
/// namespaces after all (checked against libseccomp 2.5.4: `unshare(CLONE_NEWUSER)` succeeds). The shim
/// must therefore pass the spec's filter through this function before giving it to libcontainer, and must
/// not use it with runc or crun.
pub fn for_libcontainer(profile: &LinuxSeccomp) -> LinuxSeccomp {
    let mut out = profile.clone();
    if let Some(syscalls) = profile.syscalls() {
        let swapped = syscalls
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if let Some(args) = s.args().clone() {
                    let args = args
                        .into_iter()
                        .map(|a| {
                            if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                                let (mask, expected) = (a.value(), a.value_two().unwrap_or(0));
                                arg(a.index(), a.op(), expected, Some(mask))
                            } else {
                                a
                            }
                        })
                        .collect();
                    s.set_args(Some(args));
                }
                s
            })
            .collect();
        out.set_syscalls(Some(swapped));
    }
    out
}

/// The action `profile` takes for syscall `name` called with first argument `arg0`, as libseccomp would
/// decide it for the rules this module writes (unconditional rules win; conditions on argument 0 only).
/// For tests and diagnostics, not a full seccomp evaluator.
pub fn action_for(
    profile: &LinuxSeccomp,
    name: &str,
    arg0: u64,
) -> (LinuxSeccompAction, Option<u32>) {
    let rules: Vec<&LinuxSyscall> = profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|s| s.names().iter().any(|n| n == name))
        .collect();
    let matches = |s: &LinuxSyscall| match s.args() {
        None => true,
        Some(args) => args.iter().all(|a| {
            let v = if a.index() == 0 { arg0 } else { 0 };
            match a.op() {
                LinuxSeccompOperator::ScmpCmpEq => v == a.value(),
                LinuxSeccompOperator::ScmpCmpNe => v != a.value(),
                LinuxSeccompOperator::ScmpCmpLt => v < a.value(),
                LinuxSeccompOperator::ScmpCmpLe => v <= a.value(),
                LinuxSeccompOperator::ScmpCmpGt => v > a.value(),
                LinuxSeccompOperator::ScmpCmpGe => v >= a.value(),
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    v & a.value() == a.value_two().unwrap_or(0)
                }
            }
        }),
    };
    let hit = rules
        .iter()
        .copied()
        .find(|s| s.args().is_none())
        .or_else(|| rules.iter().copied().find(|s| matches(s)));
    match hit {
        Some(s) => (s.action(), s.errno_ret()),
        None => (profile.default_action(), profile.default_errno_ret()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};

    const CLONE_NEWUSER: u64 = 0x1000_0000;
    const CLONE_NEWNS: u64 = 0x0002_0000;
    const CLONE_NEWTIME: u64 = 0x80;
    /// glibc fork(): CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD.
    const FORK_FLAGS: u64 = 0x0120_0011;
    /// glibc pthread_create().
    const THREAD_FLAGS: u64 = 0x003d_0f00;

    fn default_caps() -> Capabilities {
        capability::DEFAULT.iter().copied().collect()
    }

    fn with(extra: Capability) -> Capabilities {
        let mut c = default_caps();
        c.insert(extra);
        c
    }

    #[test]
    fn allowed_and_blocked_lists_are_disjoint() {
        let allowed: BTreeSet<&str> = COMMON
            .iter()
            .chain(LEGACY)
            .chain(COMPAT32)
            .chain(X86_ONLY)
            .chain(ARM_ONLY)
            .copied()
            .collect();
        let gated: BTreeSet<&str> = WITH_SYS_ADMIN
            .iter()
            .chain(WITH_SYS_PTRACE)
            .chain(WITH_SYS_TIME)
            .copied()
            .collect();
        for b in BLOCKED {
            assert!(
                !allowed.contains(b) && !gated.contains(b),
                "{b} is both blocked and allowed"
            );
        }
        for g in &gated {
            assert!(!allowed.contains(g), "{g} is gated and also always allowed");
        }
        assert_eq!(
            allowed.len(),
            COMMON.len() + LEGACY.len() + COMPAT32.len() + X86_ONLY.len() + ARM_ONLY.len()
        );
    }

    #[test]
    fn default_profile_blocks_the_dangerous_and_allows_the_ordinary() {
        let p = default_profile(HostArch::X86_64, &default_caps());
        assert_eq!(p.default_action(), Errno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(
            p.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "fork",
            "vfork",
            "wait4",
            "socket",
            "futex",
            "chroot",
            "sethostname",
        ] {
            assert_eq!(action_for(&p, name, 0).0, Allow, "{name}");
        }
        for name in BLOCKED.iter().chain(
            [
                "mount",
                "umount2",
                "pivot_root",
                "setns",
                "ptrace",
                "settimeofday",
                "syslog",
            ]
            .iter(),
        ) {
            assert_eq!(action_for(&p, name, 0), (Errno, Some(EPERM)), "{name}");
        }
        assert_eq!(action_for(&p, "kexec_load", 0), (Errno, Some(EPERM)));
        // clone: ordinary forks and threads pass, namespace creation does not.
        assert_eq!(action_for(&p, "clone", FORK_FLAGS).0, Allow);
        assert_eq!(action_for(&p, "clone", THREAD_FLAGS).0, Allow);
        assert_eq!(action_for(&p, "clone", FORK_FLAGS | CLONE_NEWUSER).0, Errno);
        assert_eq!(action_for(&p, "clone", CLONE_NEWNS).0, Errno);
        // unshare: CLONE_FILES is fine, any CLONE_NEW* (time included) is not.
        assert_eq!(action_for(&p, "unshare", 0x400).0, Allow);
        assert_eq!(
            action_for(&p, "unshare", CLONE_NEWUSER),
            (Errno, Some(EPERM))
        );
        assert_eq!(
            action_for(&p, "unshare", CLONE_NEWTIME),
            (Errno, Some(EPERM))
        );
        assert_eq!(action_for(&p, "clone3", 0), (Errno, Some(ENOSYS)));
        assert_eq!(action_for(&p, "personality", 0x8).0, Allow);
        assert_eq!(
            action_for(&p, "personality", 0x0040_0000).0,
            Errno,
            "READ_IMPLIES_EXEC"
        );
        assert_eq!(action_for(&p, "arch_prctl", 0).0, Allow);
        assert_eq!(
            action_for(&p, "set_tls", 0).0,
            Errno,
            "arm-only names stay out of the x86 profile"
        );
    }

    #[test]
    fn capabilities_open_their_gates() {
        let admin = default_profile(HostArch::X86_64, &with(Capability::SysAdmin));
        for name in ["mount", "umount2", "pivot_root", "setns", "clone3"] {
            assert_eq!(action_for(&admin, name, 0).0, Allow, "{name}");
        }
        assert_eq!(action_for(&admin, "unshare", CLONE_NEWUSER).0, Allow);
        assert_eq!(action_for(&admin, "kexec_load", 0).0, Errno);
        let ptrace = default_profile(HostArch::X86_64, &with(Capability::SysPtrace));
        assert_eq!(action_for(&ptrace, "ptrace", 0).0, Allow);
        let time = default_profile(HostArch::X86_64, &with(Capability::SysTime));
        assert_eq!(action_for(&time, "clock_settime", 0).0, Allow);
    }

    #[test]
    fn arm64_profile_has_arm_names() {
        let p = default_profile(HostArch::Aarch64, &default_caps());
        assert_eq!(
            p.architectures().clone().unwrap(),
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        assert_eq!(action_for(&p, "set_tls", 0).0, Allow);
        assert_eq!(action_for(&p, "arch_prctl", 0).0, Errno);
    }

    #[test]
    fn parses_oci_and_docker_formats() {
        let oci = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let p = parse_profile(oci, HostArch::X86_64, &default_caps()).unwrap();
        assert_eq!(p.default_action(), Allow);
        assert_eq!(action_for(&p, "fchmodat", 0).0, Errno);
        assert_eq!(action_for(&p, "read", 0).0, Allow);

        let docker = r#"{
          "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
          "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                      {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
          "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"name": "arch_prctl", "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "comment": "ignored"}
          ]}"#;
        let p = parse_profile(docker, HostArch::X86_64, &default_caps()).unwrap();
        assert_eq!(
            p.architectures().clone().unwrap(),
            HostArch::X86_64.scmp_arches()
        );
        assert_eq!(action_for(&p, "arch_prctl", 0).0, Allow);
        assert_eq!(action_for(&p, "mount", 0).0, Errno);
        assert_eq!(action_for(&p, "clone", FORK_FLAGS).0, Allow);
        assert_eq!(action_for(&p, "clone", CLONE_NEWUSER).0, Errno);
        let admin = parse_profile(docker, HostArch::X86_64, &with(Capability::SysAdmin)).unwrap();
        assert_eq!(action_for(&admin, "mount", 0).0, Allow);
        let arm = parse_profile(docker, HostArch::Aarch64, &default_caps()).unwrap();
        assert_eq!(
            arm.architectures().clone().unwrap(),
            HostArch::Aarch64.scmp_arches()
        );
        assert_eq!(action_for(&arm, "arch_prctl", 0).0, Errno);

        assert!(matches!(
            parse_profile("{not json", HostArch::X86_64, &default_caps()),
            Err(SeccompError::Parse(_))
        ));
        assert!(
            parse_profile(
                r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#,
                HostArch::X86_64,
                &default_caps()
            )
            .is_err()
        );
        let only_s390 =
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_S390X"}]}"#;
        assert!(matches!(
            parse_profile(only_s390, HostArch::X86_64, &default_caps()),
            Err(SeccompError::NoArchitecture("amd64"))
        ));
    }

    #[test]
    fn libcontainer_adapter_swaps_masked_eq_operands_only() {
        let p = default_profile(HostArch::X86_64, &default_caps());
        let y = for_libcontainer(&p);
        let clone_arg = |p: &LinuxSeccomp| {
            p.syscalls()
                .iter()
                .flatten()
                .find(|s| s.names() == &["clone"])
                .unwrap()
                .args()
                .clone()
                .unwrap()[0]
        };
        assert_eq!(
            (clone_arg(&p).value(), clone_arg(&p).value_two()),
            (CLONE_NAMESPACE_FLAGS, Some(0))
        );
        assert_eq!(
            (clone_arg(&y).value(), clone_arg(&y).value_two()),
            (0, Some(CLONE_NAMESPACE_FLAGS))
        );
        let pers = |p: &LinuxSeccomp| {
            p.syscalls()
                .iter()
                .flatten()
                .filter(|s| s.names() == &["personality"])
                .map(|s| s.args().clone().unwrap()[0].value())
                .collect::<Vec<_>>()
        };
        assert_eq!(pers(&p), pers(&y));
    }
}
