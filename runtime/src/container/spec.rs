//! The OCI runtime spec (`config.json`) of a CRI container, built the way containerd's CRI plugin builds
//! it, because kubelet and critest rely on that behaviour: command and args, env, user and groups,
//! capabilities, mounts, namespaces, cgroup path and resources, devices, masked paths, sysctls, seccomp,
//! AppArmor and annotations.
//!
//! Pure logic: the host is read only through [`HostFs`], the image's `/etc/passwd` and `/etc/group` come in
//! as strings, so everything is unit-tested without root.

use crate::config::CgroupDriver;
use crate::container::caps;
use crate::container::defaults;
use crate::container::hostfs::{DeviceKind, HostFs};
use crate::container::seccomp::{self, HostArch};
use crate::container::user;
use crate::image::manifest::ContainerConfig as ImageConfig;
use keelson_cri::v1 as cri;
use keelson_cri::v1::security_profile::ProfileType;
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxResources,
    LinuxSeccomp, Mount, Process, Root, Spec, User,
};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Why a container's spec could not be built. Every message names the container (its CRI metadata name).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "container {container}: no command: the CRI config sets no command or args and the image no Entrypoint or Cmd"
    )]
    NoCommand { container: String },
    #[error("container {container}: user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { container: String, user: String },
    #[error("container {container}: group {group:?} not found in the image's /etc/group")]
    UnknownGroup { container: String, group: String },
    #[error("container {container}: invalid {field} {value:?}")]
    InvalidUser {
        container: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "container {container}: run_as_group {gid} is set without run_as_user or run_as_username"
    )]
    GroupWithoutUser { container: String, gid: i64 },
    #[error("container {container}: privileged container in a pod whose sandbox is not privileged")]
    PrivilegedInUnprivilegedPod { container: String },
    #[error("container {container}: unknown capability {capability:?} in {field}")]
    UnknownCapability {
        container: String,
        field: &'static str,
        capability: String,
    },
    #[error("container {container}: invalid env {key:?}: {reason}")]
    Env {
        container: String,
        key: String,
        reason: &'static str,
    },
    #[error("container {container}: mount source {path} does not exist on the host")]
    MountSource { container: String, path: PathBuf },
    #[error("container {container}: invalid mount {destination:?}: {reason}")]
    InvalidMount {
        container: String,
        destination: String,
        reason: &'static str,
    },
    #[error("container {container}: mount {destination:?}: {feature} are not supported")]
    UnsupportedMount {
        container: String,
        destination: String,
        feature: &'static str,
    },
    #[error("container {container}: device {path:?}: {reason}")]
    Device {
        container: String,
        path: String,
        reason: &'static str,
    },
    #[error("container {container}: {namespace} namespace: {reason}")]
    Namespace {
        container: String,
        namespace: &'static str,
        reason: &'static str,
    },
    #[error("container {container}: invalid resources {field}: {reason}")]
    Resources {
        container: String,
        field: &'static str,
        reason: String,
    },
    #[error("container {container}: sysctl {name:?}: {reason}")]
    Sysctl {
        container: String,
        name: String,
        reason: &'static str,
    },
    #[error("container {container}: seccomp profile {profile}: {message}")]
    Seccomp {
        container: String,
        profile: String,
        message: String,
    },
    #[error(
        "container {container}: apparmor profile {profile:?} requested but apparmor is not enabled on this host"
    )]
    AppArmorUnsupported { container: String, profile: String },
    #[error("container {container}: apparmor profile {profile:?}: {reason}")]
    AppArmor {
        container: String,
        profile: String,
        reason: &'static str,
    },
    #[error("container {container}: {feature} are not supported")]
    Unsupported {
        container: String,
        feature: &'static str,
    },
}

/// Files and directories the pod sandbox prepared for its containers; `None` = the sandbox has none.
#[derive(Debug, Clone, Default)]
pub struct SandboxFiles {
    /// Bound at `/etc/hostname`.
    pub hostname: Option<PathBuf>,
    /// Bound at `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Bound at `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's shared `/dev/shm` directory (the host's `/dev/shm` for host-IPC pods); without it the
    /// container gets a private 64 MiB tmpfs.
    pub shm: Option<PathBuf>,
}

/// Namespace files the container joins. Whether a namespace is the host's, the pod's or the container's
/// own comes from the container's CRI `NamespaceOption`; these give the paths for the pod's (usually
/// bind-mount pins). `None` for a pod-level namespace means the container gets a new one.
#[derive(Debug, Clone, Default)]
pub struct SandboxNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's shared pid namespace (pid mode `POD`).
    pub pid: Option<PathBuf>,
    /// The target container's pid namespace (pid mode `TARGET`, kubectl debug); required then.
    pub target_pid: Option<PathBuf>,
}

/// Everything [`container_spec`] needs.
pub struct SpecInputs<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub sandbox: &'a cri::PodSandboxConfig,
    /// The image config's defaults (Entrypoint, Cmd, Env, User, WorkingDir).
    pub image: &'a ImageConfig,
    /// The image's name for the `io.kubernetes.cri.image-name` annotation.
    pub image_name: &'a str,
    /// The container's mounted root filesystem.
    pub rootfs: &'a Path,
    pub sandbox_files: SandboxFiles,
    pub namespaces: SandboxNamespaces,
    /// Usually the sandbox's `linux.cgroup_parent`: a path (cgroupfs) or a slice name (systemd).
    pub cgroup_parent: &'a str,
    pub cgroup_driver: CgroupDriver,
    /// The host runs cgroup v2 only: containers get a cgroup namespace and may use `unified` resources.
    pub unified_cgroups: bool,
    /// The runtime's own `oom_score_adj`: no container gets less (lowering needs CAP_SYS_RESOURCE).
    pub runtime_oom_score_adj: i32,
    /// The rootfs's `/etc/passwd` and `/etc/group`, if it has them.
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
    /// Picks the default seccomp profile's syscall names and architectures.
    pub arch: HostArch,
    /// AppArmor is enabled on the host.
    pub host_apparmor: bool,
    /// The loaded AppArmor profile that `RuntimeDefault` means; `None` = asking for it is an error.
    pub apparmor_default_profile: Option<&'a str>,
    pub host: &'a dyn HostFs,
}

/// Builds the OCI spec of the container described by `inputs`.
pub fn container_spec(inputs: &SpecInputs<'_>) -> Result<Spec, SpecError> {
    Builder::new(inputs).build()
}

/// Lexically cleans an absolute path: no `..`, no `.`, no doubled or trailing slashes.
fn clean_abs(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `KEY=value` pairs with replace-by-key semantics; first position kept.
#[derive(Default)]
struct Env(Vec<String>);

impl Env {
    fn set_raw(&mut self, entry: String) {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        match self
            .0
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(e) => *e = entry,
            None => self.0.push(entry),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.set_raw(format!("{key}={value}"));
    }
}

enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

enum AppArmorChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

struct Builder<'a, 'b> {
    inp: &'b SpecInputs<'a>,
    name: String,
    sc: std::borrow::Cow<'b, cri::LinuxContainerSecurityContext>,
}

impl<'a, 'b> Builder<'a, 'b> {
    fn new(inp: &'b SpecInputs<'a>) -> Self {
        let name = inp
            .config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| inp.container_id.to_string());
        let sc = match inp
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
        {
            Some(sc) => std::borrow::Cow::Borrowed(sc),
            None => std::borrow::Cow::Owned(cri::LinuxContainerSecurityContext::default()),
        };
        Builder { inp, name, sc }
    }

    fn container(&self) -> String {
        self.name.clone()
    }

    fn build(&self) -> Result<Spec, SpecError> {
        let privileged = self.sc.privileged;
        let sandbox_privileged = self
            .inp
            .sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if privileged && !sandbox_privileged {
            return Err(SpecError::PrivilegedInUnprivilegedPod {
                container: self.container(),
            });
        }
        if !self.inp.config.cdi_devices.is_empty() {
            return Err(SpecError::Unsupported {
                container: self.container(),
                feature: "cdi devices",
            });
        }

        let capabilities = self.capabilities(privileged)?;
        let process = self.process(&capabilities)?;
        let (mounts, rootfs_propagation) = self.mounts(privileged)?;
        let host_network = self.network_mode() == cri::NamespaceMode::Node;

        let (device_nodes, device_rules) = self.devices(privileged)?;

        let mut linux = oci_spec::runtime::Linux::default();
        linux
            .set_uid_mappings(None)
            .set_gid_mappings(None)
            .set_namespaces(Some(self.namespaces(privileged)?))
            .set_cgroups_path(Some(self.cgroups_path()?))
            .set_resources(Some(self.resources(privileged, device_rules)?))
            .set_devices(Some(device_nodes))
            .set_rootfs_propagation(rootfs_propagation)
            .set_sysctl(self.sysctls()?)
            .set_seccomp(self.seccomp(privileged, capabilities.bounding().as_ref())?)
            .set_mount_label(None);
        if privileged {
            linux.set_masked_paths(None).set_readonly_paths(None);
        } else {
            let or_default = |given: &[String], default: &[&str]| -> Vec<String> {
                if given.is_empty() {
                    default.iter().map(|s| (*s).to_string()).collect()
                } else {
                    given.to_vec()
                }
            };
            linux
                .set_masked_paths(Some(or_default(
                    &self.sc.masked_paths,
                    &defaults::MASKED_PATHS,
                )))
                .set_readonly_paths(Some(or_default(
                    &self.sc.readonly_paths,
                    &defaults::READONLY_PATHS,
                )));
        }

        let mut root = Root::default();
        root.set_path(self.inp.rootfs.to_path_buf())
            .set_readonly(Some(self.sc.readonly_rootfs));

        let hostname = (!host_network && !self.inp.sandbox.hostname.is_empty())
            .then(|| self.inp.sandbox.hostname.clone());

        let mut spec = Spec::default();
        spec.set_version(oci_spec::runtime::VERSION.to_string())
            .set_root(Some(root))
            .set_mounts(Some(mounts))
            .set_process(Some(process))
            .set_hostname(hostname)
            .set_domainname(None)
            .set_hooks(None)
            .set_annotations(Some(self.annotations()))
            .set_linux(Some(linux));
        Ok(spec)
    }

    // ---- process ----

    fn args(&self) -> Result<Vec<String>, SpecError> {
        let cfg = self.inp.config;
        let image = self.inp.image;
        let mut command = cfg.command.clone();
        let mut args = cfg.args.clone();
        if command.is_empty() {
            if args.is_empty() {
                args = image.cmd.clone().unwrap_or_default();
            }
            let entrypoint = image.entrypoint.clone().unwrap_or_default();
            // Docker writes `[""]` for "no entrypoint".
            if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
                command = entrypoint;
            }
        }
        command.extend(args);
        if command.is_empty() {
            return Err(SpecError::NoCommand {
                container: self.container(),
            });
        }
        Ok(command)
    }

    fn pod_hostname(&self) -> String {
        if !self.inp.sandbox.hostname.is_empty() {
            return self.inp.sandbox.hostname.clone();
        }
        self.inp
            .host
            .read_to_string(Path::new("/proc/sys/kernel/hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn env(&self) -> Result<Vec<String>, SpecError> {
        let mut env = Env::default();
        env.set("PATH", defaults::PATH);
        if self.inp.config.tty {
            env.set("TERM", "xterm");
        }
        let hostname = self.pod_hostname();
        if !hostname.is_empty() {
            env.set("HOSTNAME", &hostname);
        }
        for e in self.inp.image.env.iter().flatten() {
            if !e.is_empty() {
                env.set_raw(e.clone());
            }
        }
        for kv in &self.inp.config.envs {
            if kv.key.is_empty() || kv.key.contains('=') {
                return Err(SpecError::Env {
                    container: self.container(),
                    key: kv.key.clone(),
                    reason: "a key must be non-empty and contain no '='",
                });
            }
            let value = std::str::from_utf8(&kv.value).map_err(|_| SpecError::Env {
                container: self.container(),
                key: kv.key.clone(),
                reason: "the value is not valid UTF-8",
            })?;
            env.set(&kv.key, value);
        }
        Ok(env.0)
    }

    fn id_value(&self, field: &'static str, v: i64) -> Result<u32, SpecError> {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| SpecError::InvalidUser {
                container: self.container(),
                field,
                value: v.to_string(),
            })
    }

    /// The `user[:group]` string: CRI run_as_username (or run_as_user) with run_as_group, else the image's User.
    fn user_string(&self) -> Result<String, SpecError> {
        let sc = &self.sc;
        let user = if !sc.run_as_username.is_empty() {
            Some(sc.run_as_username.clone())
        } else {
            sc.run_as_user
                .as_ref()
                .map(|u| self.id_value("run_as_user", u.value).map(|v| v.to_string()))
                .transpose()?
        };
        let group = sc
            .run_as_group
            .as_ref()
            .map(|g| (g.value, self.id_value("run_as_group", g.value)));
        match (user, group) {
            (None, Some((gid, _))) => Err(SpecError::GroupWithoutUser {
                container: self.container(),
                gid,
            }),
            (None, None) => Ok(self.inp.image.user.clone().unwrap_or_default()),
            (Some(u), None) => Ok(u),
            (Some(u), Some((_, g))) => Ok(format!("{u}:{}", g?)),
        }
    }

    fn user(&self) -> Result<User, SpecError> {
        let spec = self.user_string()?;
        let passwd = self.inp.passwd.map(user::parse_passwd).unwrap_or_default();
        let groups = self.inp.group.map(user::parse_group).unwrap_or_default();
        let id = user::resolve(&spec, &passwd, &groups).map_err(|e| match e {
            user::UserError::UnknownUser(u) => SpecError::UnknownUser {
                container: self.container(),
                user: u,
            },
            user::UserError::UnknownGroup(g) => SpecError::UnknownGroup {
                container: self.container(),
                group: g,
            },
            user::UserError::Invalid(v) => SpecError::InvalidUser {
                container: self.container(),
                field: "user",
                value: v,
            },
        })?;
        let cri_groups = self
            .sc
            .supplemental_groups
            .iter()
            .map(|g| self.id_value("supplemental_groups", *g))
            .collect::<Result<Vec<_>, _>>()?;
        let merge = self.sc.supplemental_groups_policy() == cri::SupplementalGroupsPolicy::Merge;
        let mut u = User::default();
        u.set_uid(id.uid)
            .set_gid(id.gid)
            .set_additional_gids(Some(user::additional_gids(
                &id,
                &groups,
                &cri_groups,
                merge,
            )));
        Ok(u)
    }

    fn capabilities(&self, privileged: bool) -> Result<LinuxCapabilities, SpecError> {
        let last_cap = self
            .inp
            .host
            .read_to_string(Path::new("/proc/sys/kernel/cap_last_cap"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let all = caps::known_to_kernel(last_cap);
        let requested = self.sc.capabilities.clone().unwrap_or_default();
        let unknown = |field| {
            move |e: caps::CapabilityError| {
                let caps::CapabilityError::Unknown(capability) = e;
                SpecError::UnknownCapability {
                    container: self.container(),
                    field,
                    capability,
                }
            }
        };
        // Privileged containers get everything and ignore add/drop, as in containerd.
        let mut set: Capabilities = if privileged {
            all.iter().copied().collect()
        } else {
            for (field, names) in [
                ("add_capabilities", &requested.add_capabilities),
                ("drop_capabilities", &requested.drop_capabilities),
            ] {
                for n in names
                    .iter()
                    .filter(|n| !n.trim().eq_ignore_ascii_case("ALL"))
                {
                    caps::parse(n).map_err(unknown(field))?;
                }
            }
            caps::apply_cri(
                &caps::DEFAULT,
                &requested.add_capabilities,
                &requested.drop_capabilities,
                &all,
            )
            .map_err(unknown("capabilities"))?
        };
        let ambient: Capabilities = requested
            .add_ambient_capabilities
            .iter()
            .map(|c| caps::parse(c))
            .collect::<Result<_, _>>()
            .map_err(unknown("add_ambient_capabilities"))?;
        // An ambient capability only takes effect when it is also permitted and inheritable.
        set.extend(ambient.iter().copied());
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(set.clone()))
            .set_effective(Some(set.clone()))
            .set_permitted(Some(set))
            .set_inheritable(Some(ambient.clone()))
            .set_ambient(Some(ambient));
        Ok(c)
    }

    // Older kubelets still send the deprecated `apparmor_profile` string.
    #[allow(deprecated)]
    fn apparmor(&self, privileged: bool) -> Result<Option<String>, SpecError> {
        if privileged {
            return Ok(None);
        }
        let choice = match &self.sc.apparmor {
            Some(p) => match p.profile_type() {
                ProfileType::RuntimeDefault => AppArmorChoice::RuntimeDefault,
                ProfileType::Unconfined => AppArmorChoice::Unconfined,
                ProfileType::Localhost => {
                    let name = p
                        .localhost_ref
                        .strip_prefix("localhost/")
                        .unwrap_or(&p.localhost_ref);
                    AppArmorChoice::Localhost(name.to_string())
                }
            },
            None => match self.sc.apparmor_profile.as_str() {
                "" | "unconfined" => AppArmorChoice::Unconfined,
                "runtime/default" => AppArmorChoice::RuntimeDefault,
                other => match other.strip_prefix("localhost/") {
                    Some(name) => AppArmorChoice::Localhost(name.to_string()),
                    None => {
                        return Err(SpecError::AppArmor {
                            container: self.container(),
                            profile: other.to_string(),
                            reason: "expected runtime/default, unconfined or localhost/<name>",
                        });
                    }
                },
            },
        };
        let shown = |c: &AppArmorChoice| match c {
            AppArmorChoice::Localhost(n) => format!("localhost/{n}"),
            _ => "runtime/default".to_string(),
        };
        match choice {
            AppArmorChoice::Unconfined => Ok(None),
            c if !self.inp.host_apparmor => Err(SpecError::AppArmorUnsupported {
                container: self.container(),
                profile: shown(&c),
            }),
            AppArmorChoice::Localhost(n) if n.is_empty() => Err(SpecError::AppArmor {
                container: self.container(),
                profile: String::new(),
                reason: "a localhost profile needs a name",
            }),
            AppArmorChoice::Localhost(n) => Ok(Some(n)),
            AppArmorChoice::RuntimeDefault => match self.inp.apparmor_default_profile {
                Some(p) => Ok(Some(p.to_string())),
                None => Err(SpecError::AppArmor {
                    container: self.container(),
                    profile: "runtime/default".into(),
                    reason: "no runtime default profile is configured",
                }),
            },
        }
    }

    fn process(&self, capabilities: &LinuxCapabilities) -> Result<Process, SpecError> {
        let cfg = self.inp.config;
        let cwd = if !cfg.working_dir.is_empty() {
            cfg.working_dir.clone()
        } else {
            self.inp
                .image
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into())
        };
        let cri_oom = cfg
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map_or(0, |r| r.oom_score_adj);
        // Never below the runtime's own score (writing a lower one needs CAP_SYS_RESOURCE), never outside the kernel's range.
        let oom = cri_oom
            .clamp(-1000, 1000)
            .max(i64::from(self.inp.runtime_oom_score_adj)) as i32;
        let mut p = Process::default();
        p.set_terminal(Some(cfg.tty))
            .set_console_size(None)
            .set_user(self.user()?)
            .set_args(Some(self.args()?))
            .set_command_line(None)
            .set_env(Some(self.env()?))
            .set_cwd(PathBuf::from(cwd))
            .set_capabilities(Some(capabilities.clone()))
            .set_rlimits(None)
            .set_no_new_privileges(Some(self.sc.no_new_privs))
            .set_apparmor_profile(self.apparmor(self.sc.privileged)?)
            .set_oom_score_adj(Some(oom))
            .set_selinux_label(None)
            .set_io_priority(None)
            .set_scheduler(None)
            .set_exec_cpu_affinity(None);
        if self.sc.selinux_options.as_ref().is_some_and(|o| {
            !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
        }) {
            tracing::warn!(container = %self.name, "selinux options are ignored: keelson does not label containers");
        }
        Ok(p)
    }

    // ---- mounts ----

    fn cri_mount(&self, m: &cri::Mount) -> Result<(Mount, cri::MountPropagation), SpecError> {
        let invalid = |reason| SpecError::InvalidMount {
            container: self.container(),
            destination: m.container_path.clone(),
            reason,
        };
        let unsupported = |feature| SpecError::UnsupportedMount {
            container: self.container(),
            destination: m.container_path.clone(),
            feature,
        };
        let dest = clean_abs(&m.container_path)
            .ok_or_else(|| invalid("container_path must be absolute and free of '..'"))?;
        if dest == Path::new("/") {
            return Err(invalid("cannot mount over the container's root"));
        }
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(unsupported("image volumes"));
        }
        if m.recursive_read_only {
            return Err(unsupported("recursive read-only mounts"));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(unsupported("id-mapped mounts"));
        }
        if !m.mount_options.is_empty() {
            return Err(unsupported("mount options"));
        }
        if m.host_path.is_empty() {
            return Err(invalid("host_path is empty"));
        }
        let source = PathBuf::from(&m.host_path);
        if !source.is_absolute() {
            return Err(invalid("host_path must be absolute"));
        }
        if !self.inp.host.exists(&source) {
            return Err(SpecError::MountSource {
                container: self.container(),
                path: source,
            });
        }
        if m.selinux_relabel {
            tracing::warn!(container = %self.name, mount = %m.container_path, "selinux relabel is ignored: keelson does not label volumes");
        }
        let propagation = m.propagation();
        let prop = match propagation {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => "rslave",
            cri::MountPropagation::PropagationBidirectional => "rshared",
        };
        let mode = if m.readonly { "ro" } else { "rw" };
        Ok((defaults::bind(&dest, &source, &[prop, mode]), propagation))
    }

    fn mounts(&self, privileged: bool) -> Result<(Vec<Mount>, Option<String>), SpecError> {
        let mut cri_mounts = Vec::new();
        let mut rootfs_propagation: Option<&str> = None;
        let mut seen = HashSet::new();
        for m in &self.inp.config.mounts {
            let (mount, propagation) = self.cri_mount(m)?;
            if !seen.insert(mount.destination().clone()) {
                return Err(SpecError::InvalidMount {
                    container: self.container(),
                    destination: m.container_path.clone(),
                    reason: "two mounts have this destination",
                });
            }
            // Propagation into or out of the container only works if the container's root mount is not private.
            match propagation {
                // linux.rootfsPropagation takes the OCI values (shared/slave); libcontainer
                // rejects runc's recursive spellings there.
                cri::MountPropagation::PropagationBidirectional => {
                    rootfs_propagation = Some("shared")
                }
                cri::MountPropagation::PropagationHostToContainer
                    if rootfs_propagation.is_none() =>
                {
                    rootfs_propagation = Some("slave")
                }
                _ => {}
            }
            cri_mounts.push(mount);
        }
        let overridden = |d: &Path| seen.contains(d);

        let files = &self.inp.sandbox_files;
        let ro = if self.sc.readonly_rootfs { "ro" } else { "rw" };
        let mut sandbox_mounts = Vec::new();
        for (dest, src) in [
            ("/etc/hostname", &files.hostname),
            ("/etc/hosts", &files.hosts),
            ("/etc/resolv.conf", &files.resolv_conf),
        ] {
            let (dest, Some(src)) = (Path::new(dest), src) else {
                continue;
            };
            if overridden(dest) {
                continue;
            }
            if !self.inp.host.exists(src) {
                return Err(SpecError::MountSource {
                    container: self.container(),
                    path: src.clone(),
                });
            }
            sandbox_mounts.push(defaults::bind(dest, src, &["rprivate", ro]));
        }
        if !overridden(Path::new("/dev/shm")) {
            sandbox_mounts.push(match &files.shm {
                Some(src) if !self.inp.host.exists(src) => {
                    return Err(SpecError::MountSource {
                        container: self.container(),
                        path: src.clone(),
                    });
                }
                Some(src) => defaults::bind(Path::new("/dev/shm"), src, &["rprivate", "rw"]),
                None => defaults::shm_tmpfs(),
            });
        }

        // A CRI mount replaces the default at its destination; a CRI /dev replaces everything under /dev.
        let dev_replaced = overridden(Path::new("/dev"));
        let mut all: Vec<Mount> = defaults::base_mounts(privileged)
            .into_iter()
            .filter(|m| {
                let d = m.destination();
                !(overridden(d) || (dev_replaced && d.starts_with("/dev")))
            })
            .collect();
        all.extend(sandbox_mounts);
        all.extend(cri_mounts);
        // Parents before children: a stable sort by depth keeps the order within one depth.
        all.sort_by_key(|m| m.destination().components().count());
        Ok((all, rootfs_propagation.map(String::from)))
    }

    // ---- linux ----

    fn namespace_options(&self) -> cri::NamespaceOption {
        self.sc.namespace_options.clone().unwrap_or_default()
    }

    /// The container's network namespace mode as it applies: see [`follow_pod`].
    fn network_mode(&self) -> cri::NamespaceMode {
        follow_pod(
            self.namespace_options().network(),
            &self.inp.namespaces.network,
        )
    }

    fn namespaces(&self, privileged: bool) -> Result<Vec<LinuxNamespace>, SpecError> {
        let opts = self.namespace_options();
        let ns = &self.inp.namespaces;
        let entry = |typ, path: Option<&PathBuf>| {
            let mut n = LinuxNamespace::default();
            n.set_typ(typ).set_path(path.cloned());
            n
        };
        let err = |namespace, reason| SpecError::Namespace {
            container: self.container(),
            namespace,
            reason,
        };
        if let Some(u) = &opts.userns_options
            && u.mode() != cri::NamespaceMode::Node
        {
            return Err(SpecError::Unsupported {
                container: self.container(),
                feature: "user namespaces",
            });
        }
        let mut out = Vec::new();
        match opts.pid() {
            cri::NamespaceMode::Container => out.push(entry(LinuxNamespaceType::Pid, None)),
            cri::NamespaceMode::Pod => out.push(entry(LinuxNamespaceType::Pid, ns.pid.as_ref())),
            cri::NamespaceMode::Node => {}
            cri::NamespaceMode::Target => match &ns.target_pid {
                Some(p) => out.push(entry(LinuxNamespaceType::Pid, Some(p))),
                None => {
                    return Err(err(
                        "pid",
                        "mode TARGET but the target container's namespace is unknown",
                    ));
                }
            },
        }
        let shared = |mode,
                      typ,
                      path: &Option<PathBuf>,
                      name|
         -> Result<Option<LinuxNamespace>, SpecError> {
            match mode {
                cri::NamespaceMode::Node => Ok(None),
                cri::NamespaceMode::Pod => Ok(Some(entry(typ, path.as_ref()))),
                cri::NamespaceMode::Container => Ok(Some(entry(typ, None))),
                cri::NamespaceMode::Target => {
                    Err(err(name, "mode TARGET is only valid for the pid namespace"))
                }
            }
        };
        let network_mode = self.network_mode();
        out.extend(shared(
            network_mode,
            LinuxNamespaceType::Network,
            &ns.network,
            "network",
        )?);
        out.extend(shared(
            follow_pod(opts.ipc(), &ns.ipc),
            LinuxNamespaceType::Ipc,
            &ns.ipc,
            "ipc",
        )?);
        // The UTS namespace follows the network's: host network pods see the host's hostname.
        let uts_mode = if network_mode == cri::NamespaceMode::Node {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        out.extend(shared(uts_mode, LinuxNamespaceType::Uts, &ns.uts, "uts")?);
        out.push(entry(LinuxNamespaceType::Mount, None));
        if self.inp.unified_cgroups && !privileged {
            out.push(entry(LinuxNamespaceType::Cgroup, None));
        }
        Ok(out)
    }

    fn cgroups_path(&self) -> Result<PathBuf, SpecError> {
        let parent = self.inp.cgroup_parent;
        let id = self.inp.container_id;
        match self.inp.cgroup_driver {
            CgroupDriver::Cgroupfs => Ok(Path::new(if parent.is_empty() {
                "/keelson"
            } else {
                parent
            })
            .join(id)),
            CgroupDriver::Systemd => {
                let slice = Path::new(parent)
                    .file_name()
                    .and_then(|s| s.to_str())
                    .unwrap_or("");
                let slice = if parent.is_empty() {
                    "system.slice"
                } else {
                    slice
                };
                if !slice.ends_with(".slice") {
                    return Err(SpecError::Resources {
                        container: self.container(),
                        field: "cgroup_parent",
                        reason: format!("{parent:?} is not a systemd slice"),
                    });
                }
                Ok(PathBuf::from(format!("{slice}:keelson:{id}")))
            }
        }
    }

    /// Cgroup limits: the device rules (defaults, then `extra_device_rules`) and the CRI resources.
    fn resources(
        &self,
        privileged: bool,
        extra_device_rules: Vec<LinuxDeviceCgroup>,
    ) -> Result<LinuxResources, SpecError> {
        let bad = |field, reason: String| SpecError::Resources {
            container: self.container(),
            field,
            reason,
        };
        let mut res = LinuxResources::default();
        let mut device_rules = if privileged {
            defaults::privileged_device_rules()
        } else {
            defaults::device_rules()
        };
        device_rules.extend(extra_device_rules);
        res.set_devices(Some(device_rules));
        let Some(r) = self
            .inp
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
        else {
            return Ok(res);
        };
        let mut cpu = LinuxCpu::default();
        cpu.set_shares((r.cpu_shares > 0).then_some(r.cpu_shares as u64))
            .set_quota((r.cpu_quota != 0).then_some(r.cpu_quota))
            .set_period((r.cpu_period > 0).then_some(r.cpu_period as u64))
            .set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()))
            .set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
        if cpu != LinuxCpu::default() {
            res.set_cpu(Some(cpu));
        }
        let mut mem = LinuxMemory::default();
        if r.memory_limit_in_bytes > 0 {
            mem.set_limit(Some(r.memory_limit_in_bytes));
            // No swap beyond the limit unless the request says otherwise, as containerd does.
            mem.set_swap(Some(r.memory_limit_in_bytes));
        }
        if r.memory_swap_limit_in_bytes != 0 {
            mem.set_swap(Some(r.memory_swap_limit_in_bytes));
        }
        if mem != LinuxMemory::default() {
            res.set_memory(Some(mem));
        }
        if !r.hugepage_limits.is_empty() {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    if h.page_size.is_empty() {
                        return Err(bad("hugepage_limits", "a limit has no page size".into()));
                    }
                    let limit = i64::try_from(h.limit)
                        .map_err(|_| bad("hugepage_limits", format!("{} is too large", h.limit)))?;
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone()).set_limit(limit);
                    Ok(l)
                })
                .collect::<Result<Vec<_>, _>>()?;
            res.set_hugepage_limits(Some(limits));
        }
        if !r.unified.is_empty() {
            if !self.inp.unified_cgroups {
                return Err(bad(
                    "unified",
                    "cgroup v2 settings on a host without cgroup v2".into(),
                ));
            }
            res.set_unified(Some(
                r.unified
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        Ok(res)
    }

    /// The device nodes to create and their cgroup allow rules.
    fn devices(
        &self,
        privileged: bool,
    ) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
        let mut nodes: Vec<LinuxDevice> = Vec::new();
        let mut rules = Vec::new();
        let node = |path: PathBuf, d: &crate::container::hostfs::DeviceInfo| {
            let mut n = LinuxDevice::default();
            n.set_path(path)
                .set_typ(match d.kind {
                    DeviceKind::Char => LinuxDeviceType::C,
                    DeviceKind::Block => LinuxDeviceType::B,
                })
                .set_major(d.major)
                .set_minor(d.minor)
                .set_file_mode(Some(d.mode))
                .set_uid(Some(d.uid))
                .set_gid(Some(d.gid));
            n
        };
        for dev in &self.inp.config.devices {
            let bad = |reason| SpecError::Device {
                container: self.container(),
                path: dev.host_path.clone(),
                reason,
            };
            let host_path = Path::new(&dev.host_path);
            if !host_path.is_absolute() {
                return Err(bad("host_path must be absolute"));
            }
            let dest = clean_abs(&dev.container_path).ok_or_else(|| SpecError::Device {
                container: self.container(),
                path: dev.container_path.clone(),
                reason: "container_path must be absolute and free of '..'",
            })?;
            if !self.inp.host.exists(host_path) {
                return Err(bad("does not exist on the host"));
            }
            let info = self
                .inp
                .host
                .device(host_path)
                .ok_or_else(|| bad("is not a device node"))?;
            let access = if dev.permissions.is_empty() {
                "rwm".to_string()
            } else {
                dev.permissions.clone()
            };
            if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(bad("permissions must be made of r, w and m"));
            }
            let n = node(dest, &info);
            rules.push(defaults::allow_device(
                n.typ(),
                n.major(),
                n.minor(),
                &access,
            ));
            nodes.retain(|o| o.path() != n.path());
            nodes.push(n);
        }
        if privileged {
            for d in self.inp.host.list_devices() {
                if !nodes.iter().any(|n| n.path() == &d.path) {
                    nodes.push(node(d.path.clone(), &d));
                }
            }
        }
        Ok((nodes, rules))
    }

    fn sysctls(&self) -> Result<Option<HashMap<String, String>>, SpecError> {
        let Some(sysctls) = self
            .inp
            .sandbox
            .linux
            .as_ref()
            .map(|l| &l.sysctls)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let opts = self.namespace_options();
        let host_net = opts.network() == cri::NamespaceMode::Node;
        let host_ipc = opts.ipc() == cri::NamespaceMode::Node;
        for name in sysctls.keys() {
            let bad = |reason| SpecError::Sysctl {
                container: self.container(),
                name: name.clone(),
                reason,
            };
            const IPC: [&str; 8] = [
                "kernel.msgmax",
                "kernel.msgmnb",
                "kernel.msgmni",
                "kernel.sem",
                "kernel.shmall",
                "kernel.shmmax",
                "kernel.shmmni",
                "kernel.shm_rmid_forced",
            ];
            if name.starts_with("net.") {
                if host_net {
                    return Err(bad(
                        "network sysctls cannot be set in a pod on the host network",
                    ));
                }
            } else if IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
                if host_ipc {
                    return Err(bad(
                        "ipc sysctls cannot be set in a pod on the host ipc namespace",
                    ));
                }
            } else if name == "kernel.hostname" || name == "kernel.domainname" {
                if host_net {
                    return Err(bad(
                        "uts sysctls cannot be set in a pod on the host network",
                    ));
                }
            } else {
                return Err(bad("not a namespaced sysctl; it would change the host"));
            }
        }
        Ok(Some(
            sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ))
    }

    // Older kubelets and crictl still send the deprecated `seccomp_profile_path` string.
    #[allow(deprecated)]
    fn seccomp(
        &self,
        privileged: bool,
        bounding: Option<&Capabilities>,
    ) -> Result<Option<LinuxSeccomp>, SpecError> {
        if privileged {
            return Ok(None);
        }
        let sc = &self.sc;
        let choice = match &sc.seccomp {
            Some(p) => match p.profile_type() {
                ProfileType::RuntimeDefault => SeccompChoice::RuntimeDefault,
                ProfileType::Unconfined => SeccompChoice::Unconfined,
                ProfileType::Localhost => SeccompChoice::Localhost(p.localhost_ref.clone()),
            },
            // No profile at all means unconfined (critest "should support nil profile, which is unconfined").
            None => match sc.seccomp_profile_path.as_str() {
                "" | "unconfined" => SeccompChoice::Unconfined,
                "runtime/default" | "docker/default" => SeccompChoice::RuntimeDefault,
                other => match other.strip_prefix("localhost/") {
                    Some(path) => SeccompChoice::Localhost(path.to_string()),
                    None => {
                        return Err(SpecError::Seccomp {
                            container: self.container(),
                            profile: other.to_string(),
                            message: "expected runtime/default, docker/default, unconfined or localhost/<path>".into(),
                        });
                    }
                },
            },
        };
        let empty = Capabilities::new();
        let held = bounding.unwrap_or(&empty);
        match choice {
            SeccompChoice::Unconfined => Ok(None),
            SeccompChoice::RuntimeDefault => {
                Ok(Some(seccomp::default_profile(self.inp.arch, held)))
            }
            SeccompChoice::Localhost(path) => {
                let fail = |message: String| SpecError::Seccomp {
                    container: self.container(),
                    profile: path.clone(),
                    message,
                };
                if !Path::new(&path).is_absolute() {
                    return Err(fail("a localhost profile path must be absolute".into()));
                }
                let text = self
                    .inp
                    .host
                    .read_to_string(Path::new(&path))
                    .map_err(|e| fail(format!("cannot read it: {e}")))?;
                seccomp::parse_profile(&text, self.inp.arch, held)
                    .map(Some)
                    .map_err(|e| fail(e.to_string()))
            }
        }
    }

    fn annotations(&self) -> HashMap<String, String> {
        let mut a: HashMap<String, String> = self
            .inp
            .config
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let meta = self.inp.sandbox.metadata.clone().unwrap_or_default();
        for (k, v) in [
            (ANNOTATION_CONTAINER_TYPE, "container"),
            (ANNOTATION_SANDBOX_ID, self.inp.sandbox_id),
            (ANNOTATION_SANDBOX_NAME, &meta.name),
            (ANNOTATION_SANDBOX_NAMESPACE, &meta.namespace),
            (ANNOTATION_SANDBOX_UID, &meta.uid),
            (ANNOTATION_CONTAINER_NAME, &self.name),
            (ANNOTATION_IMAGE_NAME, self.inp.image_name),
        ] {
            a.insert(k.to_string(), v.to_string());
        }
        a
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;

/// Network and IPC namespaces are the pod's, as containerd joins the pause container's: a
/// container of a host-network (host-IPC) pod is in the host's namespace even when its own
/// config says nothing (critest's, for one), since the sandbox pinned no namespace of its own.
fn follow_pod(mode: cri::NamespaceMode, pinned: &Option<PathBuf>) -> cri::NamespaceMode {
    match mode {
        cri::NamespaceMode::Pod if pinned.is_none() => cri::NamespaceMode::Node,
        other => other,
    }
}
