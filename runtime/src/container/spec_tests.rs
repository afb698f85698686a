//! Unit tests of the container spec builder, against a fake host.

// The deprecated seccomp/apparmor strings are part of what is tested.
#![allow(deprecated)]

use super::*;
use crate::container::hostfs::DeviceInfo;
use crate::container::seccomp::action_for;
use keelson_cri::v1::{Int64Value, KeyValue, NamespaceMode, SecurityProfile};
use oci_spec::runtime::{Capability, LinuxSeccompAction};
use std::io;

#[derive(Default)]
struct FakeHost {
    files: HashMap<PathBuf, String>,
    paths: HashSet<PathBuf>,
    devices: Vec<DeviceInfo>,
}

impl HostFs for FakeHost {
    fn exists(&self, path: &Path) -> bool {
        self.paths.contains(path)
            || self.files.contains_key(path)
            || self.devices.iter().any(|d| d.path == path)
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn device(&self, path: &Path) -> Option<DeviceInfo> {
        self.devices.iter().find(|d| d.path == path).cloned()
    }
    fn list_devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
const GROUP: &str =
    "root:x:0:\nwww:x:33:\nalice:x:1000:\nwheel:x:10:root,alice\nfifty:x:50000:alice\n";

fn dev(path: &str, kind: DeviceKind, major: i64, minor: i64) -> DeviceInfo {
    DeviceInfo {
        path: path.into(),
        kind,
        major,
        minor,
        mode: 0o660,
        uid: 0,
        gid: 6,
    }
}

struct Fixture {
    config: cri::ContainerConfig,
    sandbox: cri::PodSandboxConfig,
    image: ImageConfig,
    host: FakeHost,
    files: SandboxFiles,
    namespaces: SandboxNamespaces,
    cgroup_parent: String,
    driver: CgroupDriver,
    unified: bool,
    runtime_oom: i32,
    host_apparmor: bool,
    apparmor_default: Option<&'static str>,
}

impl Fixture {
    fn new() -> Self {
        let mut host = FakeHost::default();
        for p in [
            "/run/pod/hostname",
            "/run/pod/hosts",
            "/run/pod/resolv.conf",
            "/run/pod/shm",
            "/data",
            "/data/logs",
            "/cache",
        ] {
            host.paths.insert(p.into());
        }
        host.files
            .insert("/proc/sys/kernel/cap_last_cap".into(), "40\n".into());
        host.devices = vec![
            dev("/dev/fuse", DeviceKind::Char, 10, 229),
            dev("/dev/sda", DeviceKind::Block, 8, 0),
        ];
        Fixture {
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            sandbox: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "pod-host".into(),
                linux: Some(cri::LinuxPodSandboxConfig::default()),
                ..Default::default()
            },
            image: ImageConfig {
                entrypoint: Some(vec!["/entry".into()]),
                cmd: Some(vec!["serve".into()]),
                env: Some(vec!["FOO=image".into(), "BAR=image".into()]),
                working_dir: Some("/srv".into()),
                ..Default::default()
            },
            host,
            files: SandboxFiles {
                hostname: Some("/run/pod/hostname".into()),
                hosts: Some("/run/pod/hosts".into()),
                resolv_conf: Some("/run/pod/resolv.conf".into()),
                shm: Some("/run/pod/shm".into()),
            },
            namespaces: SandboxNamespaces {
                network: Some("/run/netns/pod".into()),
                ipc: Some("/run/ipcns/pod".into()),
                uts: Some("/run/utsns/pod".into()),
                pid: Some("/run/pidns/pod".into()),
                target_pid: None,
            },
            cgroup_parent: "/kubepods/burstable/poduid-1".into(),
            driver: CgroupDriver::Cgroupfs,
            unified: false,
            runtime_oom: 0,
            host_apparmor: false,
            apparmor_default: None,
        }
    }

    fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn ns(&mut self) -> &mut cri::NamespaceOption {
        self.sc()
            .namespace_options
            .get_or_insert_with(Default::default)
    }

    fn res(&mut self) -> &mut cri::LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    fn privileged(&mut self) {
        self.sc().privileged = true;
        self.sandbox
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }

    fn build(&self) -> Result<Spec, SpecError> {
        container_spec(&SpecInputs {
            container_id: "c0ffee",
            sandbox_id: "5a4d",
            config: &self.config,
            sandbox: &self.sandbox,
            image: &self.image,
            image_name: "docker.io/library/busybox:latest",
            rootfs: Path::new("/var/lib/keelson/c0ffee/rootfs"),
            sandbox_files: self.files.clone(),
            namespaces: self.namespaces.clone(),
            cgroup_parent: &self.cgroup_parent,
            cgroup_driver: self.driver,
            unified_cgroups: self.unified,
            runtime_oom_score_adj: self.runtime_oom,
            passwd: Some(PASSWD),
            group: Some(GROUP),
            arch: HostArch::X86_64,
            host_apparmor: self.host_apparmor,
            apparmor_default_profile: self.apparmor_default,
            host: &self.host,
        })
    }

    fn ok(&self) -> Spec {
        self.build().unwrap_or_else(|e| panic!("spec failed: {e}"))
    }

    fn err(&self) -> String {
        match self.build() {
            Ok(_) => panic!("spec unexpectedly built"),
            Err(e) => e.to_string(),
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

fn process(s: &Spec) -> &Process {
    s.process().as_ref().unwrap()
}

fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
    s.linux().as_ref().unwrap()
}

fn mount<'s>(s: &'s Spec, dest: &str) -> Option<&'s Mount> {
    s.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
}

fn opts(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

fn kv(k: &str, v: &[u8]) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.to_vec(),
    }
}

fn cri_mount(container: &str, host: &str) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.into(),
        ..Default::default()
    }
}

fn bounding(s: &Spec) -> Capabilities {
    process(s)
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap()
}

#[test]
fn command_and_args_follow_kubernetes_rules() {
    // (CRI command, CRI args, image entrypoint, image cmd) -> argv (None: NoCommand)
    type Case<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
        Option<&'a [&'a str]>,
    );
    let cases: &[Case] = &[
        (
            &[],
            &[],
            Some(&["/entry"]),
            Some(&["serve"]),
            Some(&["/entry", "serve"]),
        ),
        (
            &["/bin/sh"],
            &[],
            Some(&["/entry"]),
            Some(&["serve"]),
            Some(&["/bin/sh"]),
        ),
        (
            &[],
            &["-v"],
            Some(&["/entry"]),
            Some(&["serve"]),
            Some(&["/entry", "-v"]),
        ),
        (
            &["/bin/sh"],
            &["-c", "x"],
            Some(&["/entry"]),
            Some(&["serve"]),
            Some(&["/bin/sh", "-c", "x"]),
        ),
        (&[], &[], Some(&[""]), Some(&["serve"]), Some(&["serve"])),
        (&[], &[], None, Some(&["sh"]), Some(&["sh"])),
        (&[], &[], None, None, None),
        (&[], &[], Some(&[""]), None, None),
    ];
    for (i, (command, args, entrypoint, cmd, want)) in cases.iter().enumerate() {
        let mut f = Fixture::new();
        f.config.command = strings(command);
        f.config.args = strings(args);
        f.image.entrypoint = entrypoint.map(strings);
        f.image.cmd = cmd.map(strings);
        match want {
            Some(want) => assert_eq!(
                process(&f.ok()).args().clone().unwrap(),
                strings(want),
                "case {i}"
            ),
            None => {
                let e = f.build().unwrap_err();
                assert!(matches!(e, SpecError::NoCommand { .. }), "case {i}: {e}");
                assert!(e.to_string().contains("container web"), "{e}");
            }
        }
    }
}

#[test]
fn env_merges_image_then_cri_by_key() {
    let mut f = Fixture::new();
    f.config.envs = vec![kv("FOO", b"cri"), kv("NEW", b"1")];
    let env = process(&f.ok()).env().clone().unwrap();
    assert_eq!(
        env,
        strings(&[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=pod-host",
            "FOO=cri",
            "BAR=image",
            "NEW=1"
        ])
    );

    let mut f = Fixture::new();
    f.image.env = Some(strings(&["PATH=/opt/bin", "HOSTNAME=img"]));
    f.config.tty = true;
    let env = process(&f.ok()).env().clone().unwrap();
    assert_eq!(
        env,
        strings(&["PATH=/opt/bin", "TERM=xterm", "HOSTNAME=img"])
    );
    assert_eq!(process(&f.ok()).terminal(), Some(true));

    let mut f = Fixture::new();
    f.config.envs = vec![kv("BAD", &[0xff, 0xfe])];
    assert!(f.err().contains("invalid env \"BAD\""));
    f.config.envs = vec![kv("", b"x")];
    assert!(matches!(f.build(), Err(SpecError::Env { .. })));
}

#[test]
fn cwd_prefers_cri_then_image_then_root() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.ok()).cwd(), Path::new("/srv"));
    f.config.working_dir = "/work".into();
    assert_eq!(process(&f.ok()).cwd(), Path::new("/work"));
    f.config.working_dir.clear();
    f.image.working_dir = None;
    assert_eq!(process(&f.ok()).cwd(), Path::new("/"));
}

#[test]
fn user_comes_from_cri_or_image() {
    type Setup = fn(&mut Fixture);
    type Want<'a> = Result<(u32, u32, &'a [u32]), &'a str>;
    let cases: &[(&str, Setup, Want)] = &[
        (
            "no user: root with root's groups",
            |_| {},
            Ok((0, 0, &[0, 10])),
        ),
        (
            "image uid",
            |f| f.image.user = Some("1000".into()),
            Ok((1000, 1000, &[1000, 10, 50000])),
        ),
        (
            "image name",
            |f| f.image.user = Some("www".into()),
            Ok((33, 33, &[33])),
        ),
        (
            "image uid:gid",
            |f| f.image.user = Some("1000:33".into()),
            Ok((1000, 33, &[33, 10, 50000])),
        ),
        (
            "image name:group",
            |f| f.image.user = Some("alice:wheel".into()),
            Ok((1000, 10, &[10, 50000])),
        ),
        (
            "image unknown uid",
            |f| f.image.user = Some("4242".into()),
            Ok((4242, 0, &[0])),
        ),
        (
            "image unknown name",
            |f| f.image.user = Some("nobody".into()),
            Err("user \"nobody\" not found"),
        ),
        (
            "image unknown group",
            |f| f.image.user = Some("alice:staff".into()),
            Err("group \"staff\" not found"),
        ),
        (
            "run_as_user overrides image",
            |f| {
                f.image.user = Some("www".into());
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
            },
            Ok((1000, 1000, &[1000, 10, 50000])),
        ),
        (
            "run_as_user + run_as_group",
            |f| {
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
                f.sc().run_as_group = Some(Int64Value { value: 2000 });
            },
            Ok((1000, 2000, &[2000, 10, 50000])),
        ),
        (
            "run_as_username",
            |f| f.sc().run_as_username = "www".into(),
            Ok((33, 33, &[33])),
        ),
        (
            "run_as_username unknown",
            |f| f.sc().run_as_username = "ghost".into(),
            Err("user \"ghost\" not found"),
        ),
        (
            "run_as_group alone",
            |f| f.sc().run_as_group = Some(Int64Value { value: 5 }),
            Err("run_as_group 5 is set without"),
        ),
        (
            "negative uid",
            |f| f.sc().run_as_user = Some(Int64Value { value: -1 }),
            Err("invalid run_as_user \"-1\""),
        ),
        (
            "supplemental groups merge",
            |f| {
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
                f.sc().supplemental_groups = vec![1234];
            },
            Ok((1000, 1000, &[1000, 10, 50000, 1234])),
        ),
        (
            "supplemental groups strict",
            |f| {
                f.sc().run_as_user = Some(Int64Value { value: 1000 });
                f.sc().supplemental_groups = vec![1234];
                f.sc().supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
            },
            Ok((1000, 1000, &[1000, 1234])),
        ),
    ];
    for (what, setup, want) in cases {
        let mut f = Fixture::new();
        setup(&mut f);
        match want {
            Ok((uid, gid, groups)) => {
                let spec = f.ok();
                let u = process(&spec).user();
                assert_eq!(
                    (u.uid(), u.gid(), u.additional_gids().clone().unwrap()),
                    (*uid, *gid, groups.to_vec()),
                    "{what}"
                );
            }
            Err(msg) => {
                let e = f.err();
                assert!(
                    e.contains(msg) && e.contains("container web"),
                    "{what}: {e}"
                );
            }
        }
    }
}

#[test]
fn capabilities_default_add_drop() {
    let set = |names: &[Capability]| names.iter().copied().collect::<Capabilities>();
    let default = set(&caps::DEFAULT);
    let f = Fixture::new();
    let spec = f.ok();
    let c = process(&spec).capabilities().clone().unwrap();
    assert_eq!(c.bounding().clone().unwrap(), default);
    assert_eq!(c.effective().clone().unwrap(), default);
    assert_eq!(c.permitted().clone().unwrap(), default);
    assert!(c.inheritable().clone().unwrap().is_empty());
    assert!(c.ambient().clone().unwrap().is_empty());

    let all = caps::known_to_kernel(None);
    type Case<'a> = (&'a [&'a str], &'a [&'a str], Result<Capabilities, &'a str>);
    let cases: &[Case] = &[
        (&["ALL"], &[], Ok(all.iter().copied().collect())),
        (&[], &["ALL"], Ok(Capabilities::new())),
        (
            &["NET_ADMIN"],
            &[],
            Ok({
                let mut s = default.clone();
                s.insert(Capability::NetAdmin);
                s
            }),
        ),
        (
            &["CAP_NET_ADMIN"],
            &["NET_RAW"],
            Ok({
                let mut s = default.clone();
                s.insert(Capability::NetAdmin);
                s.remove(&Capability::NetRaw);
                s
            }),
        ),
        (&["NET_ADMIN"], &["ALL"], Ok(set(&[Capability::NetAdmin]))),
        (
            &["all"],
            &["CHOWN"],
            Ok(all
                .iter()
                .copied()
                .filter(|c| *c != Capability::Chown)
                .collect()),
        ),
        (
            &["NET_WIZARD"],
            &[],
            Err("unknown capability \"NET_WIZARD\" in add_capabilities"),
        ),
        (
            &[],
            &["CAP_BOGUS"],
            Err("unknown capability \"CAP_BOGUS\" in drop_capabilities"),
        ),
    ];
    for (add, drop, want) in cases {
        let mut f = Fixture::new();
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strings(add),
            drop_capabilities: strings(drop),
            add_ambient_capabilities: vec![],
        });
        match want {
            Ok(want) => assert_eq!(&bounding(&f.ok()), want, "add {add:?} drop {drop:?}"),
            Err(msg) => assert!(
                f.err().contains(msg),
                "add {add:?} drop {drop:?}: {}",
                f.err()
            ),
        }
    }

    // An older kernel bounds "ALL".
    let mut f = Fixture::new();
    f.host
        .files
        .insert("/proc/sys/kernel/cap_last_cap".into(), "37".into());
    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strings(&["ALL"]),
        ..Default::default()
    });
    let b = bounding(&f.ok());
    assert_eq!(b.len(), 38);
    assert!(!b.contains(&Capability::Bpf));
}

#[test]
fn privileged_gets_everything_and_no_confinement() {
    let mut f = Fixture::new();
    f.privileged();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    f.sc().capabilities = Some(cri::Capability {
        drop_capabilities: strings(&["ALL"]),
        ..Default::default()
    });
    let spec = f.ok();
    assert_eq!(bounding(&spec).len(), 41);
    let l = linux(&spec);
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    assert!(l.seccomp().is_none());
    assert!(opts(mount(&spec, "/sys").unwrap()).contains(&"rw".to_string()));
    assert!(opts(mount(&spec, "/sys/fs/cgroup").unwrap()).contains(&"rw".to_string()));
    let devices = l.devices().clone().unwrap();
    assert_eq!(
        devices.iter().map(|d| d.path().clone()).collect::<Vec<_>>(),
        vec![PathBuf::from("/dev/fuse"), PathBuf::from("/dev/sda")]
    );
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(
        rules.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["a *:* rwm"]
    );

    // Not in an unprivileged pod.
    let mut f = Fixture::new();
    f.sc().privileged = true;
    assert!(matches!(
        f.build(),
        Err(SpecError::PrivilegedInUnprivilegedPod { .. })
    ));
}

#[test]
fn masked_and_readonly_paths_default_or_from_cri() {
    let f = Fixture::new();
    let spec = f.ok();
    assert_eq!(
        linux(&spec).masked_paths().clone().unwrap(),
        strings(&defaults::MASKED_PATHS)
    );
    assert!(
        linux(&spec)
            .masked_paths()
            .clone()
            .unwrap()
            .contains(&"/sys/devices/virtual/powercap".to_string())
    );
    assert_eq!(
        linux(&spec).readonly_paths().clone().unwrap(),
        strings(&defaults::READONLY_PATHS)
    );

    let mut f = Fixture::new();
    f.sc().masked_paths = strings(&["/bin/ls"]);
    f.sc().readonly_paths = strings(&["/tmp"]);
    let spec = f.ok();
    assert_eq!(
        linux(&spec).masked_paths().clone().unwrap(),
        strings(&["/bin/ls"])
    );
    assert_eq!(
        linux(&spec).readonly_paths().clone().unwrap(),
        strings(&["/tmp"])
    );
}

#[test]
fn default_and_sandbox_mounts() {
    let f = Fixture::new();
    let spec = f.ok();
    let dests: Vec<_> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        dests,
        strings(&[
            "/proc",
            "/dev",
            "/sys",
            "/dev/pts",
            "/dev/mqueue",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
            "/sys/fs/cgroup"
        ])
    );
    let pts = mount(&spec, "/dev/pts").unwrap();
    assert_eq!(pts.typ().as_deref(), Some("devpts"));
    assert!(
        ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
            .iter()
            .all(|o| opts(pts).contains(&o.to_string()))
    );
    assert!(opts(mount(&spec, "/dev").unwrap()).contains(&"size=65536k".to_string()));
    assert!(opts(mount(&spec, "/sys").unwrap()).contains(&"ro".to_string()));
    let hosts = mount(&spec, "/etc/hosts").unwrap();
    assert_eq!(hosts.source().as_deref(), Some(Path::new("/run/pod/hosts")));
    assert_eq!(opts(hosts), strings(&["rbind", "rprivate", "rw"]));
    let shm = mount(&spec, "/dev/shm").unwrap();
    assert_eq!(
        (shm.typ().as_deref(), shm.source().as_deref()),
        (Some("bind"), Some(Path::new("/run/pod/shm")))
    );

    // Read-only rootfs: the pod files are read-only too; no shm dir: a private tmpfs.
    let mut f = Fixture::new();
    f.sc().readonly_rootfs = true;
    f.files.shm = None;
    f.files.hostname = None;
    let spec = f.ok();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        spec.root().as_ref().unwrap().path(),
        Path::new("/var/lib/keelson/c0ffee/rootfs")
    );
    assert_eq!(
        opts(mount(&spec, "/etc/resolv.conf").unwrap()),
        strings(&["rbind", "rprivate", "ro"])
    );
    assert!(mount(&spec, "/etc/hostname").is_none());
    let shm = mount(&spec, "/dev/shm").unwrap();
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    assert!(opts(shm).contains(&"size=65536k".to_string()));

    let mut f = Fixture::new();
    f.files.hosts = Some("/run/gone/hosts".into());
    assert_eq!(
        f.err(),
        "container web: mount source /run/gone/hosts does not exist on the host"
    );
}

#[test]
fn cri_mounts() {
    let mut f = Fixture::new();
    let mut logs = cri_mount("/data/logs/", "/data/logs");
    logs.readonly = true;
    logs.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    let mut data = cri_mount("/data", "/data");
    data.propagation = cri::MountPropagation::PropagationPrivate as i32;
    data.selinux_relabel = true;
    let hosts = cri_mount("/etc/hosts", "/cache");
    f.config.mounts = vec![logs, data, hosts];
    let spec = f.ok();
    let all = spec.mounts().clone().unwrap();
    let pos = |d: &str| {
        all.iter()
            .position(|m| m.destination() == Path::new(d))
            .unwrap()
    };
    assert!(pos("/data") < pos("/data/logs"), "parents before children");
    assert_eq!(
        opts(mount(&spec, "/data/logs").unwrap()),
        strings(&["rbind", "rslave", "ro"])
    );
    assert_eq!(
        opts(mount(&spec, "/data").unwrap()),
        strings(&["rbind", "rprivate", "rw"])
    );
    assert_eq!(
        mount(&spec, "/data").unwrap().typ().as_deref(),
        Some("bind")
    );
    let hosts: Vec<_> = all
        .iter()
        .filter(|m| m.destination() == Path::new("/etc/hosts"))
        .collect();
    assert_eq!(
        hosts.len(),
        1,
        "the CRI mount replaces the sandbox's /etc/hosts"
    );
    assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/cache")));
    assert_eq!(linux(&spec).rootfs_propagation().as_deref(), Some("slave"));

    let mut f = Fixture::new();
    let mut shared = cri_mount("/shared", "/data");
    shared.propagation = cri::MountPropagation::PropagationBidirectional as i32;
    let mut slave = cri_mount("/slave", "/cache");
    slave.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    f.config.mounts = vec![shared, slave];
    let spec = f.ok();
    assert_eq!(opts(mount(&spec, "/shared").unwrap())[1], "rshared");
    assert_eq!(linux(&spec).rootfs_propagation().as_deref(), Some("shared"));

    // Replacing a default, and /dev replacing everything under it.
    let mut f = Fixture::new();
    f.config.mounts = vec![cri_mount("/proc", "/data"), cri_mount("/dev", "/cache")];
    let spec = f.ok();
    assert_eq!(
        mount(&spec, "/proc").unwrap().typ().as_deref(),
        Some("bind")
    );
    assert!(mount(&spec, "/dev/pts").is_none() && mount(&spec, "/dev/mqueue").is_none());

    let errors: &[(cri::Mount, &str)] = &[
        (
            cri_mount("/x", "/missing"),
            "container web: mount source /missing does not exist on the host",
        ),
        (
            cri_mount("relative", "/data"),
            "container web: invalid mount \"relative\": container_path must be absolute",
        ),
        (cri_mount("/x/../etc", "/data"), "free of '..'"),
        (cri_mount("/x", ""), "host_path is empty"),
        (
            cri_mount("//", "/data"),
            "cannot mount over the container's root",
        ),
        (
            cri::Mount {
                recursive_read_only: true,
                readonly: true,
                ..cri_mount("/x", "/data")
            },
            "recursive read-only mounts are not supported",
        ),
        (
            cri::Mount {
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..cri_mount("/x", "")
            },
            "image volumes are not supported",
        ),
    ];
    for (m, msg) in errors {
        let mut f = Fixture::new();
        f.config.mounts = vec![m.clone()];
        let e = f.err();
        assert!(e.contains(msg), "{m:?}: {e}");
    }
    let mut f = Fixture::new();
    f.config.mounts = vec![cri_mount("/x", "/data"), cri_mount("/x/", "/cache")];
    assert!(f.err().contains("two mounts have this destination"));
}

#[test]
fn namespaces_per_mode() {
    use LinuxNamespaceType as T;
    let got = |f: &Fixture| -> Vec<(T, Option<PathBuf>)> {
        linux(&f.ok())
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    };
    let p = |s: &str| Some(PathBuf::from(s));

    // No options: everything from the pod.
    let f = Fixture::new();
    assert_eq!(
        got(&f),
        vec![
            (T::Pid, p("/run/pidns/pod")),
            (T::Network, p("/run/netns/pod")),
            (T::Ipc, p("/run/ipcns/pod")),
            (T::Uts, p("/run/utsns/pod")),
            (T::Mount, None),
        ]
    );
    assert_eq!(f.ok().hostname().as_deref(), Some("pod-host"));

    // Kubelet's usual: own pid namespace, pod network and ipc.
    let mut f = Fixture::new();
    f.ns().pid = NamespaceMode::Container as i32;
    assert_eq!(got(&f)[0], (T::Pid, None));

    // Host pid, network and ipc: no entries, no hostname (host's UTS).
    let mut f = Fixture::new();
    let ns = f.ns();
    ns.pid = NamespaceMode::Node as i32;
    ns.network = NamespaceMode::Node as i32;
    ns.ipc = NamespaceMode::Node as i32;
    assert_eq!(got(&f), vec![(T::Mount, None)]);
    assert_eq!(f.ok().hostname(), &None);
    assert!(
        process(&f.ok())
            .env()
            .clone()
            .unwrap()
            .contains(&"HOSTNAME=pod-host".to_string())
    );

    // A sandbox that pinned no network or IPC namespace (host network and IPC) shares the
    // host's with its containers even when their own options say POD; UTS follows network.
    // A pod PID namespace without a holder is a new one.
    let mut f = Fixture::new();
    f.namespaces = SandboxNamespaces::default();
    assert_eq!(got(&f), vec![(T::Pid, None), (T::Mount, None)]);
    assert_eq!(f.ok().hostname(), &None);

    // TARGET joins the target's pid namespace, and needs it.
    let mut f = Fixture::new();
    f.ns().pid = NamespaceMode::Target as i32;
    f.ns().target_id = "other".into();
    assert!(f.err().contains("pid namespace: mode TARGET"));
    f.namespaces.target_pid = p("/proc/42/ns/pid");
    assert_eq!(got(&f)[0], (T::Pid, p("/proc/42/ns/pid")));
    f.ns().network = NamespaceMode::Target as i32;
    assert!(
        f.err()
            .contains("network namespace: mode TARGET is only valid")
    );

    // cgroup namespace on cgroup v2 for unprivileged containers.
    let mut f = Fixture::new();
    f.unified = true;
    assert_eq!(got(&f).last().unwrap(), &(T::Cgroup, None));
    f.privileged();
    assert_ne!(got(&f).last().unwrap().0, T::Cgroup);

    let mut f = Fixture::new();
    f.ns().userns_options = Some(cri::UserNamespace {
        mode: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    assert!(f.err().contains("user namespaces are not supported"));
    f.ns().userns_options = Some(cri::UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    });
    f.ok();
}

#[test]
fn cgroups_path_per_driver() {
    let mut f = Fixture::new();
    assert_eq!(
        linux(&f.ok()).cgroups_path().as_deref(),
        Some(Path::new("/kubepods/burstable/poduid-1/c0ffee"))
    );
    f.cgroup_parent.clear();
    assert_eq!(
        linux(&f.ok()).cgroups_path().as_deref(),
        Some(Path::new("/keelson/c0ffee"))
    );
    f.driver = CgroupDriver::Systemd;
    assert_eq!(
        linux(&f.ok()).cgroups_path().as_deref(),
        Some(Path::new("system.slice:keelson:c0ffee"))
    );
    f.cgroup_parent = "kubepods-burstable-poduid_1.slice".into();
    assert_eq!(
        linux(&f.ok()).cgroups_path().as_deref(),
        Some(Path::new(
            "kubepods-burstable-poduid_1.slice:keelson:c0ffee"
        ))
    );
    f.cgroup_parent = "/kubepods/burstable".into();
    assert!(
        f.err()
            .contains("\"/kubepods/burstable\" is not a systemd slice")
    );
}

#[test]
fn resources_from_cri() {
    let f = Fixture::new();
    let spec = f.ok();
    let r = linux(&spec).resources().clone().unwrap();
    assert!(r.cpu().is_none() && r.memory().is_none());

    let mut f = Fixture::new();
    let r = f.res();
    r.cpu_shares = 512;
    r.cpu_quota = 50_000;
    r.cpu_period = 100_000;
    r.cpuset_cpus = "0-1".into();
    r.cpuset_mems = "0".into();
    r.memory_limit_in_bytes = 256 << 20;
    r.hugepage_limits = vec![cri::HugepageLimit {
        page_size: "2MB".into(),
        limit: 4 << 20,
    }];
    let spec = f.ok();
    let res = linux(&spec).resources().clone().unwrap();
    let cpu = res.cpu().clone().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(
        (cpu.cpus().as_deref(), cpu.mems().as_deref()),
        (Some("0-1"), Some("0"))
    );
    let mem = res.memory().unwrap();
    assert_eq!(
        (mem.limit(), mem.swap()),
        (Some(256 << 20), Some(256 << 20))
    );
    let huge = res.hugepage_limits().clone().unwrap();
    assert_eq!(
        (huge[0].page_size().as_str(), huge[0].limit()),
        ("2MB", 4 << 20)
    );

    let mut f = Fixture::new();
    f.res().memory_limit_in_bytes = 1 << 30;
    f.res().memory_swap_limit_in_bytes = 2 << 30;
    f.res().unified.insert("memory.high".into(), "900M".into());
    assert!(f.err().contains("invalid resources unified"));
    f.unified = true;
    let spec = f.ok();
    let res = linux(&spec).resources().clone().unwrap();
    assert_eq!(res.memory().unwrap().swap(), Some(2 << 30));
    assert_eq!(
        res.unified()
            .clone()
            .unwrap()
            .get("memory.high")
            .map(String::as_str),
        Some("900M")
    );
}

#[test]
fn oom_score_adj_never_below_the_runtime() {
    let cases = [
        (0, 0, 0),
        (-997, 0, 0),
        (1000, 0, 1000),
        (500, 200, 500),
        (-500, -998, -500),
        (0, -998, 0),
        (5000, 0, 1000),
    ];
    for (cri, runtime, want) in cases {
        let mut f = Fixture::new();
        f.res().oom_score_adj = cri;
        f.runtime_oom = runtime;
        assert_eq!(
            process(&f.ok()).oom_score_adj(),
            Some(want),
            "cri {cri} runtime {runtime}"
        );
    }
}

#[test]
fn devices_from_cri() {
    let mut f = Fixture::new();
    f.config.devices = vec![cri::Device {
        container_path: "/dev/fuse".into(),
        host_path: "/dev/fuse".into(),
        permissions: "rw".into(),
    }];
    let spec = f.ok();
    let d = &linux(&spec).devices().clone().unwrap()[0];
    assert_eq!(
        (d.path().as_path(), d.typ(), d.major(), d.minor()),
        (Path::new("/dev/fuse"), LinuxDeviceType::C, 10, 229)
    );
    let rules = linux(&spec)
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert_eq!(rules[0].to_string(), "a *:* rwm");
    assert!(!rules[0].allow());
    assert_eq!(rules.last().unwrap().to_string(), "c 10:229 rw");

    let cases = [
        ("/dev/nope", "", "does not exist on the host"),
        ("/data", "", "is not a device node"),
        ("/dev/fuse", "rwx", "permissions must be made of r, w and m"),
    ];
    for (host, perms, msg) in cases {
        let mut f = Fixture::new();
        f.config.devices = vec![cri::Device {
            container_path: "/dev/x".into(),
            host_path: host.into(),
            permissions: perms.into(),
        }];
        assert!(f.err().contains(msg), "{host}: {}", f.err());
    }
}

#[test]
fn sysctls_from_the_sandbox() {
    let mut f = Fixture::new();
    let sysctls = &mut f.sandbox.linux.as_mut().unwrap().sysctls;
    sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    sysctls.insert("kernel.shm_rmid_forced".into(), "1".into());
    let spec = f.ok();
    let s = linux(&spec).sysctl().clone().unwrap();
    assert_eq!(
        s.get("kernel.shm_rmid_forced").map(String::as_str),
        Some("1")
    );

    f.ns().network = NamespaceMode::Node as i32;
    assert!(f.err().contains("network sysctls cannot be set"));

    let mut f = Fixture::new();
    f.sandbox
        .linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("vm.swappiness".into(), "0".into());
    assert!(
        f.err()
            .contains("sysctl \"vm.swappiness\": not a namespaced sysctl")
    );
}

fn profile(t: ProfileType, r: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    })
}

#[test]
fn seccomp_profiles() {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    // No profile at all, or Unconfined: none.
    let f = Fixture::new();
    assert!(linux(&f.ok()).seccomp().is_none());
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::Unconfined, "");
    assert!(linux(&f.ok()).seccomp().is_none());

    // RuntimeDefault: ours, blocking what it should.
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    let spec = f.ok();
    let sc = linux(&spec).seccomp().clone().unwrap();
    assert_eq!(action_for(&sc, "kexec_load", 0), (Errno, Some(1)));
    assert_eq!(
        action_for(&sc, "unshare", 0x1000_0000).0,
        Errno,
        "CLONE_NEWUSER"
    );
    assert_eq!(action_for(&sc, "mount", 0).0, Errno);
    assert_eq!(action_for(&sc, "read", 0).0, Allow);
    // ... and following the container's capabilities.
    f.sc().capabilities = Some(cri::Capability {
        add_capabilities: strings(&["SYS_ADMIN"]),
        ..Default::default()
    });
    let spec = f.ok();
    assert_eq!(
        action_for(linux(&spec).seccomp().as_ref().unwrap(), "mount", 0).0,
        Allow
    );

    // The deprecated strings.
    for (path, confined) in [
        ("runtime/default", true),
        ("docker/default", true),
        ("unconfined", false),
        ("", false),
    ] {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = path.into();
        assert_eq!(linux(&f.ok()).seccomp().is_some(), confined, "{path:?}");
    }
    let mut f = Fixture::new();
    f.sc().seccomp_profile_path = "strict".into();
    assert!(f.err().contains("seccomp profile strict: expected"));

    // Localhost: read through the host, errors name the file.
    let block_chmod = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#;
    let mut f = Fixture::new();
    f.host.files.insert(
        "/var/lib/kubelet/seccomp/block-chmod.json".into(),
        block_chmod.into(),
    );
    f.host.files.insert(
        "/var/lib/kubelet/seccomp/bad.json".into(),
        "{\"defaultAction\":".into(),
    );
    f.sc().seccomp = profile(
        ProfileType::Localhost,
        "/var/lib/kubelet/seccomp/block-chmod.json",
    );
    let spec = f.ok();
    let sc = linux(&spec).seccomp().clone().unwrap();
    assert_eq!(sc.default_action(), Allow);
    assert_eq!(action_for(&sc, "fchmodat", 0).0, Errno);
    f.sc().seccomp = None;
    f.sc().seccomp_profile_path = "localhost//var/lib/kubelet/seccomp/block-chmod.json".into();
    assert!(linux(&f.ok()).seccomp().is_some());
    f.sc().seccomp = profile(ProfileType::Localhost, "/var/lib/kubelet/seccomp/bad.json");
    let e = f.err();
    assert!(e.starts_with("container web: seccomp profile /var/lib/kubelet/seccomp/bad.json: invalid seccomp profile"), "{e}");
    f.sc().seccomp = profile(ProfileType::Localhost, "/nowhere.json");
    assert!(
        f.err()
            .contains("seccomp profile /nowhere.json: cannot read it")
    );
    f.sc().seccomp = profile(ProfileType::Localhost, "profiles/x.json");
    assert!(f.err().contains("must be absolute"));
}

#[test]
fn apparmor_profiles() {
    let mut f = Fixture::new();
    f.sc().apparmor = profile(ProfileType::Unconfined, "");
    assert!(process(&f.ok()).apparmor_profile().is_none());
    f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
    assert_eq!(
        f.err(),
        "container web: apparmor profile \"runtime/default\" requested but apparmor is not enabled on this host"
    );
    f.sc().apparmor = None;
    f.sc().apparmor_profile = "localhost/k8s-deny-write".into();
    assert!(matches!(
        f.build(),
        Err(SpecError::AppArmorUnsupported { .. })
    ));

    f.host_apparmor = true;
    assert_eq!(
        process(&f.ok()).apparmor_profile().as_deref(),
        Some("k8s-deny-write")
    );
    f.sc().apparmor = profile(ProfileType::Localhost, "k8s-deny-write");
    assert_eq!(
        process(&f.ok()).apparmor_profile().as_deref(),
        Some("k8s-deny-write")
    );
    f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
    assert!(f.err().contains("no runtime default profile is configured"));
    f.apparmor_default = Some("keelson-default");
    assert_eq!(
        process(&f.ok()).apparmor_profile().as_deref(),
        Some("keelson-default")
    );

    // Privileged containers are never confined.
    let mut f = Fixture::new();
    f.privileged();
    f.sc().apparmor = profile(ProfileType::RuntimeDefault, "");
    assert!(process(&f.ok()).apparmor_profile().is_none());
}

#[test]
fn annotations_and_misc() {
    let mut f = Fixture::new();
    f.config.annotations.insert("team".into(), "a".into());
    f.config
        .annotations
        .insert(ANNOTATION_CONTAINER_TYPE.into(), "sandbox".into());
    f.sc().no_new_privs = true;
    let spec = f.ok();
    let a = spec.annotations().clone().unwrap();
    assert_eq!(a[ANNOTATION_CONTAINER_TYPE], "container");
    assert_eq!(a[ANNOTATION_SANDBOX_ID], "5a4d");
    assert_eq!(a[ANNOTATION_CONTAINER_NAME], "web");
    assert_eq!(a[ANNOTATION_IMAGE_NAME], "docker.io/library/busybox:latest");
    assert_eq!(a[ANNOTATION_SANDBOX_NAMESPACE], "default");
    assert_eq!(a["team"], "a");
    let p = process(&spec);
    assert_eq!(p.no_new_privileges(), Some(true));
    assert!(p.rlimits().is_none());

    let mut f = Fixture::new();
    f.config.cdi_devices = vec![cri::CdiDevice {
        name: "vendor.com/gpu=0".into(),
    }];
    assert_eq!(f.err(), "container web: cdi devices are not supported");
}

#[test]
fn spec_serializes_to_oci_json() {
    let mut f = Fixture::new();
    f.sc().seccomp = profile(ProfileType::RuntimeDefault, "");
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    let spec = f.ok();
    let json = serde_json::to_string(&spec).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ociVersion"], "1.1.0");
    assert_eq!(v["root"]["path"], "/var/lib/keelson/c0ffee/rootfs");
    assert_eq!(v["process"]["args"], serde_json::json!(["/entry", "serve"]));
    assert_eq!(v["process"]["user"]["uid"], 1000);
    assert_eq!(
        v["process"]["user"]["additionalGids"],
        serde_json::json!([1000, 10, 50000])
    );
    assert_eq!(v["process"]["oomScoreAdj"], 0);
    assert!(
        v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&"CAP_KILL".into())
    );
    assert_eq!(v["hostname"], "pod-host");
    assert_eq!(
        v["linux"]["cgroupsPath"],
        "/kubepods/burstable/poduid-1/c0ffee"
    );
    assert_eq!(
        v["linux"]["namespaces"][1],
        serde_json::json!({"type": "network", "path": "/run/netns/pod"})
    );
    assert_eq!(
        v["linux"]["resources"]["devices"][0],
        serde_json::json!({"allow": false, "type": "a", "access": "rwm"})
    );
    assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        v["linux"]["seccomp"]["architectures"][0],
        "SCMP_ARCH_X86_64"
    );
    let clone = v["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["names"] == serde_json::json!(["clone"]))
        .unwrap();
    assert_eq!(
        clone["args"][0],
        serde_json::json!({"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"})
    );
    assert_eq!(
        v["mounts"][0],
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]})
    );
    // And it reads back as the same spec.
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

/// Prints the default profile; run with `cargo test -p keelson-runtime --lib dump_default_seccomp -- --ignored --nocapture`.
#[test]
#[ignore]
fn dump_default_seccomp_profile() {
    let caps: Capabilities = caps::DEFAULT.iter().copied().collect();
    let p = seccomp::default_profile(HostArch::current().unwrap_or(HostArch::X86_64), &caps);
    println!("{}", serde_json::to_string_pretty(&p).unwrap());
}
