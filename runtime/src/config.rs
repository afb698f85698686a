//! Runtime daemon settings: defaults, overridden by the TOML config file, overridden by flags.

use crate::streaming::StreamingOptions;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET: &str = "/run/keelson/cri.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/keelson/runtime";
pub const DEFAULT_STATE: &str = "/run/keelson/runtime";
pub const DEFAULT_CONFIG: &str = "/etc/keelson/runtime.toml";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CNI_BIN_DIRS: &str = "/opt/cni/bin:/usr/lib/cni";
pub const DEFAULT_REGISTRY_CONFIG_DIR: &str = "/etc/keelson/certs.d";
/// Loopback, any free port: the node agent on this host is the streaming server's client.
pub const DEFAULT_STREAM_ADDRESS: &str = "127.0.0.1:0";

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid cgroup driver {0:?}: expected cgroupfs, systemd or auto")]
    CgroupDriver(String),
    #[error(
        "cgroup driver systemd needs systemd as init and a cgroup v2 host; use cgroupfs (or auto)"
    )]
    SystemdUnavailable,
    #[error("streaming tls: {0}")]
    StreamTls(&'static str),
}

/// Which cgroup manager the runtime drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    /// `auto` picks systemd when it can drive the container cgroups (PID 1 is systemd, which
    /// then owns the tree, on a cgroup v2 host: libcontainer's systemd manager is v2 only),
    /// else cgroupfs. An explicit `systemd` where it cannot work is refused up front rather
    /// than at each container's creation.
    pub fn resolve(setting: &str, systemd_cgroups: bool) -> Result<Self, ConfigError> {
        match setting {
            "cgroupfs" => Ok(Self::Cgroupfs),
            "systemd" if systemd_cgroups => Ok(Self::Systemd),
            "systemd" => Err(ConfigError::SystemdUnavailable),
            "auto" if systemd_cgroups => Ok(Self::Systemd),
            "auto" => Ok(Self::Cgroupfs),
            other => Err(ConfigError::CgroupDriver(other.to_string())),
        }
    }

    /// Whether systemd can manage container cgroups here: it is the init system (what systemd
    /// itself checks) and the host uses the unified (v2) hierarchy.
    pub fn host_supports_systemd_cgroups() -> bool {
        Path::new("/run/systemd/system").is_dir()
            && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    }
}

/// The config file's keys; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<String>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dirs: Option<Vec<PathBuf>>,
    pub insecure_registries: Option<Vec<String>>,
    pub registry_config_dir: Option<PathBuf>,
    /// A docker `config.json` (`auths`) with per-registry credentials, used when a pull's
    /// `AuthConfig` gives none (and for mirrors).
    pub registry_credentials: Option<PathBuf>,
    pub cgroup_driver: Option<String>,
    pub max_concurrent_downloads: Option<usize>,
    /// `HOST:PORT` of the exec/attach/port-forward streaming server.
    pub stream_address: Option<String>,
    pub stream_tls_cert: Option<PathBuf>,
    pub stream_tls_key: Option<PathBuf>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Reads `path`; a missing default file is not an error, a missing explicit one is.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

/// The settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub registry_config_dir: PathBuf,
    /// Docker `config.json` with per-registry credentials; none by default.
    pub registry_credentials: Option<PathBuf>,
    pub cgroup_driver: CgroupDriver,
    pub max_concurrent_downloads: usize,
    /// The streaming server's listen address and optional TLS.
    pub streaming: StreamingOptions,
}

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    pub socket: Option<String>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dirs: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_config_dir: Option<PathBuf>,
    pub registry_credentials: Option<PathBuf>,
    pub cgroup_driver: Option<String>,
    pub stream_address: Option<String>,
    pub stream_tls_cert: Option<PathBuf>,
    pub stream_tls_key: Option<PathBuf>,
}

/// Accepts `unix:///path` as well as a plain path, as crictl users write either.
pub fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
}

fn split_dirs(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The streaming server's settings: TLS needs both halves, named when one is missing.
fn streaming_options(
    address: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
) -> Result<StreamingOptions, ConfigError> {
    match (&tls_cert, &tls_key) {
        (Some(_), None) => {
            return Err(ConfigError::StreamTls(
                "--stream-tls-cert was given without --stream-tls-key: https needs the private key too (config key stream_tls_key)",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::StreamTls(
                "--stream-tls-key was given without --stream-tls-cert: https needs the certificate too (config key stream_tls_cert)",
            ));
        }
        _ => {}
    }
    Ok(StreamingOptions {
        address: address.unwrap_or_else(|| DEFAULT_STREAM_ADDRESS.into()),
        tls_cert,
        tls_key,
    })
}

impl RuntimeConfig {
    /// Flags override the file, the file overrides defaults.
    pub fn assemble(
        file: FileConfig,
        flags: FlagOverrides,
        systemd_booted: bool,
    ) -> Result<Self, ConfigError> {
        let driver = flags
            .cgroup_driver
            .or(file.cgroup_driver)
            .unwrap_or_else(|| "auto".to_string());
        let mut insecure = file.insecure_registries.unwrap_or_default();
        insecure.extend(flags.insecure_registries);
        Ok(Self {
            socket: socket_path(
                &flags
                    .socket
                    .or(file.socket)
                    .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            ),
            root: flags
                .root
                .or(file.root)
                .unwrap_or_else(|| DEFAULT_ROOT.into()),
            state: flags
                .state
                .or(file.state)
                .unwrap_or_else(|| DEFAULT_STATE.into()),
            cni_conf_dir: flags
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| DEFAULT_CNI_CONF_DIR.into()),
            cni_bin_dirs: flags
                .cni_bin_dirs
                .map(|s| split_dirs(&s))
                .or(file.cni_bin_dirs)
                .unwrap_or_else(|| split_dirs(DEFAULT_CNI_BIN_DIRS)),
            insecure_registries: insecure,
            registry_config_dir: flags
                .registry_config_dir
                .or(file.registry_config_dir)
                .unwrap_or_else(|| DEFAULT_REGISTRY_CONFIG_DIR.into()),
            registry_credentials: flags.registry_credentials.or(file.registry_credentials),
            cgroup_driver: CgroupDriver::resolve(&driver, systemd_booted)?,
            max_concurrent_downloads: file.max_concurrent_downloads.unwrap_or(4).clamp(1, 32),
            streaming: streaming_options(
                flags.stream_address.or(file.stream_address),
                flags.stream_tls_cert.or(file.stream_tls_cert),
                flags.stream_tls_key.or(file.stream_tls_key),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let file = FileConfig::parse(
            "root = \"/srv/k\"\nsocket = \"/tmp/from-file.sock\"\ninsecure_registries = [\"reg:5000\"]\ncgroup_driver = \"systemd\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let flags = FlagOverrides {
            socket: Some("unix:///tmp/flag.sock".into()),
            insecure_registries: vec!["other:80".into()],
            ..Default::default()
        };
        let c = RuntimeConfig::assemble(file, flags, true).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/flag.sock"));
        assert_eq!(c.root, PathBuf::from("/srv/k"));
        assert_eq!(c.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(c.insecure_registries, vec!["reg:5000", "other:80"]);
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(c.streaming.address, DEFAULT_STREAM_ADDRESS);
        assert_eq!(c.streaming.tls_cert, None);
        assert_eq!(
            c.cni_bin_dirs,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn registry_credentials_from_file_or_flag() {
        let none = RuntimeConfig::assemble(FileConfig::default(), FlagOverrides::default(), false)
            .unwrap();
        assert_eq!(none.registry_credentials, None);
        assert_eq!(
            none.registry_config_dir,
            PathBuf::from(DEFAULT_REGISTRY_CONFIG_DIR)
        );
        let text = "registry_credentials = \"/etc/keelson/config.json\"\n";
        let file = FileConfig::parse(text, Path::new("t.toml")).unwrap();
        let c = RuntimeConfig::assemble(file, FlagOverrides::default(), false).unwrap();
        assert_eq!(
            c.registry_credentials,
            Some(PathBuf::from("/etc/keelson/config.json"))
        );
        let file = FileConfig::parse(text, Path::new("t.toml")).unwrap();
        let flags = FlagOverrides {
            registry_credentials: Some("/run/flag.json".into()),
            ..Default::default()
        };
        let c = RuntimeConfig::assemble(file, flags, false).unwrap();
        assert_eq!(
            c.registry_credentials,
            Some(PathBuf::from("/run/flag.json"))
        );
    }

    #[test]
    fn stream_tls_needs_both_halves() {
        let flags = FlagOverrides {
            stream_tls_cert: Some("/etc/k/cert.pem".into()),
            ..Default::default()
        };
        let e = RuntimeConfig::assemble(FileConfig::default(), flags, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("--stream-tls-cert was given without --stream-tls-key"),
            "{e}"
        );
        let file = FileConfig::parse("stream_tls_key = \"/k.pem\"\n", Path::new("t.toml")).unwrap();
        let e = RuntimeConfig::assemble(file, FlagOverrides::default(), false).unwrap_err();
        assert!(
            e.to_string()
                .contains("--stream-tls-key was given without --stream-tls-cert"),
            "{e}"
        );
        let flags = FlagOverrides {
            stream_address: Some("127.0.0.1:10010".into()),
            stream_tls_cert: Some("/c.pem".into()),
            stream_tls_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let c = RuntimeConfig::assemble(FileConfig::default(), flags, false).unwrap();
        assert_eq!(c.streaming.address, "127.0.0.1:10010");
        assert_eq!(c.streaming.tls_key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn auto_driver_follows_init_system() {
        assert_eq!(
            CgroupDriver::resolve("auto", true).unwrap(),
            CgroupDriver::Systemd
        );
        assert_eq!(
            CgroupDriver::resolve("auto", false).unwrap(),
            CgroupDriver::Cgroupfs
        );
        assert!(CgroupDriver::resolve("docker", false).is_err());
        let e = CgroupDriver::resolve("systemd", false).unwrap_err();
        assert!(e.to_string().contains("cgroup v2"), "{e}");
        assert_eq!(
            CgroupDriver::resolve("systemd", true).unwrap(),
            CgroupDriver::Systemd
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_file() {
        let err = FileConfig::parse("sockett = \"x\"", Path::new("/etc/keelson/runtime.toml"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/keelson/runtime.toml"), "{msg}");
        assert!(msg.contains("sockett"), "{msg}");
    }

    #[test]
    fn missing_default_file_is_fine_missing_explicit_is_not() {
        assert!(FileConfig::load(Some(Path::new("/nonexistent/keelson.toml"))).is_err());
    }
}
