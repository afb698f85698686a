//! CNI: runs the standard plugins (ADD, CHECK, DEL) for a pod's network namespace, per the CNI spec.
//!
//! The network comes from the first config file in `--cni-conf-dir` (lexical order, `.conflist`
//! or single-plugin `.conf`/`.json`). Plugins run as child processes with the `CNI_*` environment
//! and their config on stdin; a chain passes each plugin's result to the next as `prevResult`.
//! Plugin execution sits behind [`PluginExec`] so the chaining logic is tested without root.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What went wrong talking to CNI.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network config in {0}")]
    NoConfig(PathBuf),
    #[error("cannot read CNI config dir {dir}: {source}")]
    ConfigDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CNI config {path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin} {command} for {container}: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        container: String,
        message: String,
    },
}

/// How a plugin run failed: exit status plus what it printed.
#[derive(Debug)]
pub struct ExecFailure {
    pub message: String,
    pub stdout: Vec<u8>,
}

/// Runs one plugin binary. Blocking.
pub trait PluginExec: Send + Sync {
    fn exec(
        &self,
        plugin: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Result<Vec<u8>, ExecFailure>;
}

/// Executes plugins as real child processes with a clean environment.
pub struct ProcessExec;

impl PluginExec for ProcessExec {
    fn exec(
        &self,
        plugin: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Result<Vec<u8>, ExecFailure> {
        let mut child = Command::new(plugin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ExecFailure {
                message: format!("cannot start: {e}"),
                stdout: Vec::new(),
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its config makes this fail; its exit status says more.
            let _ = input.write_all(stdin);
        }
        let out = child.wait_with_output().map_err(|e| ExecFailure {
            message: format!("cannot wait: {e}"),
            stdout: Vec::new(),
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(ExecFailure {
                message: format!("{} {}", out.status, stderr.trim()),
                stdout: out.stdout,
            })
        }
    }
}

/// A network: the list's name and version, and its plugins' configs in order.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// Parses a `.conflist`, or a single-plugin `.conf`/`.json` (wrapped as a list of one).
    pub fn parse(path: &Path, text: &str) -> Result<Self, CniError> {
        let invalid = |message: String| CniError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("missing \"name\"".into()))?;
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let plugins = match v.get("plugins") {
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(invalid("\"plugins\" is not a list".into())),
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for p in &plugins {
            if p.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(invalid("a plugin has no \"type\"".into()));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            name: name.to_string(),
            cni_version,
            plugins,
        })
    }

    /// The first network config in `dir`, as containerd and kubelet pick it.
    pub fn load_first(dir: &Path) -> Result<Self, CniError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CniError::ConfigDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConfig(dir.to_path_buf()))?;
        let text = std::fs::read_to_string(&path).map_err(|e| CniError::InvalidConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&path, &text)
    }

    /// The list kubelet/containerd use for the pod's loopback interface.
    pub fn loopback() -> Self {
        Self {
            path: PathBuf::from("<builtin loopback>"),
            name: "cni-loopback".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "loopback"})],
        }
    }
}

/// A host port to forward into the pod (the `portMappings` capability).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// One pod's attachment to a network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs: K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID.
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<PortMapping>,
}

/// Runs plugin chains from the configured binary directories.
pub struct Cni<E: PluginExec = ProcessExec> {
    pub bin_dirs: Vec<PathBuf>,
    pub exec: E,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Add,
    Check,
    Del,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Check => "CHECK",
            Op::Del => "DEL",
        }
    }
}

impl<E: PluginExec> Cni<E> {
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if plugin.contains('/') {
            return Err(CniError::PluginNotFound {
                plugin: plugin.into(),
                dirs: self.bin_dirs.clone(),
            });
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.into(),
                dirs: self.bin_dirs.clone(),
            })
    }

    fn env(&self, op: Op, att: &Attachment) -> Vec<(String, String)> {
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let path = self
            .bin_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        vec![
            ("CNI_COMMAND".into(), op.name().into()),
            ("CNI_CONTAINERID".into(), att.container_id.clone()),
            ("CNI_NETNS".into(), att.netns.display().to_string()),
            ("CNI_IFNAME".into(), att.ifname.clone()),
            ("CNI_ARGS".into(), args.join(";")),
            ("CNI_PATH".into(), path),
        ]
    }

    /// The stdin config for one plugin: its own config plus the list's name and version, the
    /// runtime config for capabilities it declares, and the previous result when chained.
    fn plugin_config(
        net: &NetworkList,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        let obj = conf
            .as_object_mut()
            .expect("validated plugin config is an object");
        obj.insert("name".into(), Value::String(net.name.clone()));
        obj.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
        let wants_ports = plugin
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports && !att.port_mappings.is_empty() {
            obj.insert(
                "runtimeConfig".into(),
                json!({ "portMappings": att.port_mappings }),
            );
        }
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        conf
    }

    fn run(
        &self,
        op: Op,
        net: &NetworkList,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let binary = self.find(&kind)?;
        let conf = Self::plugin_config(net, plugin, att, prev);
        let stdin = serde_json::to_vec(&conf).expect("json serializes");
        self.exec
            .exec(&binary, &self.env(op, att), &stdin)
            .map_err(|f| {
                // Plugins report errors as JSON {code, msg, details} on stdout.
                let detail = serde_json::from_slice::<Value>(&f.stdout)
                    .ok()
                    .and_then(|v| {
                        let msg = v.get("msg")?.as_str()?.to_string();
                        let details = v.get("details").and_then(Value::as_str).unwrap_or("");
                        Some(if details.is_empty() {
                            msg
                        } else {
                            format!("{msg}: {details}")
                        })
                    })
                    .unwrap_or(f.message);
                CniError::Plugin {
                    plugin: kind,
                    command: op.name(),
                    container: att.container_id.clone(),
                    message: detail,
                }
            })
    }

    /// ADD through the chain; returns the final result (what DEL and CHECK need later).
    pub fn add(&self, net: &NetworkList, att: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let out = self.run(Op::Add, net, plugin, att, prev.as_ref())?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| CniError::Plugin {
                plugin: plugin["type"].as_str().unwrap_or_default().into(),
                command: "ADD",
                container: att.container_id.clone(),
                message: format!("unparsable result: {e}"),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the chain with the cached ADD result (CNI 0.4.0 and later).
    pub fn check(
        &self,
        net: &NetworkList,
        att: &Attachment,
        cached: &Value,
    ) -> Result<(), CniError> {
        for plugin in &net.plugins {
            self.run(Op::Check, net, plugin, att, Some(cached))?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse. Every plugin is asked even if one fails; the first
    /// failure is returned. DEL is idempotent in the spec, so a retry after a crash is safe.
    pub fn del(
        &self,
        net: &NetworkList,
        att: &Attachment,
        cached: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.run(Op::Del, net, plugin, att, cached) {
                tracing::warn!(container = %att.container_id, error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The pod IPs in a CNI result (`ips[].address` without the prefix length), IPv4 first.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// (plugin name, environment, stdin config) of one call.
    type Call = (String, Vec<(String, String)>, Value);

    /// Records every call and answers from a script.
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        fail: Option<&'static str>,
    }

    impl PluginExec for Recorder {
        fn exec(
            &self,
            plugin: &Path,
            env: &[(String, String)],
            stdin: &[u8],
        ) -> Result<Vec<u8>, ExecFailure> {
            let name = plugin.file_name().unwrap().to_string_lossy().to_string();
            let conf: Value = serde_json::from_slice(stdin).unwrap();
            self.calls
                .lock()
                .unwrap()
                .push((name.clone(), env.to_vec(), conf));
            if self.fail == Some(name.as_str()) {
                return Err(ExecFailure {
                    message: "exit status: 1".into(),
                    stdout:
                        br#"{"code":11,"msg":"no IP addresses available","details":"range full"}"#
                            .to_vec(),
                });
            }
            Ok(format!(
                r#"{{"cniVersion":"1.0.0","ips":[{{"address":"10.88.0.{}/16"}}],"by":"{name}"}}"#,
                self.calls.lock().unwrap().len()
            )
            .into_bytes())
        }
    }

    fn setup(
        fail: Option<&'static str>,
    ) -> (tempfile::TempDir, Cni<Recorder>, NetworkList, Attachment) {
        let bins = tempfile::tempdir().unwrap();
        for b in ["bridge", "portmap"] {
            std::fs::write(bins.path().join(b), b"").unwrap();
        }
        let net = NetworkList::parse(
            Path::new("10-k.conflist"),
            r#"{"cniVersion":"1.0.0","name":"keelson","plugins":[{"type":"bridge","bridge":"k0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let att = Attachment {
            container_id: "sb1".into(),
            netns: "/run/keelson/runtime/netns/sb1".into(),
            ifname: "eth0".into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "web".into()),
            ],
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
        };
        let cni = Cni {
            bin_dirs: vec![bins.path().to_path_buf()],
            exec: Recorder {
                calls: Mutex::new(vec![]),
                fail,
            },
        };
        (bins, cni, net, att)
    }

    #[test]
    fn add_chains_prev_result_and_passes_capabilities() {
        let (_b, cni, net, att) = setup(None);
        let result = cni.add(&net, &att).unwrap();
        assert_eq!(result["by"], "portmap");
        let calls = cni.exec.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        let (_, env, bridge_conf) = &calls[0];
        assert!(env.contains(&("CNI_COMMAND".into(), "ADD".into())));
        assert!(env.contains(&(
            "CNI_ARGS".into(),
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".into()
        )));
        assert_eq!(bridge_conf["name"], "keelson");
        assert!(bridge_conf.get("prevResult").is_none());
        assert!(
            bridge_conf.get("runtimeConfig").is_none(),
            "bridge did not ask for portMappings"
        );
        let (_, _, portmap_conf) = &calls[1];
        assert_eq!(portmap_conf["prevResult"]["by"], "bridge");
        assert_eq!(
            portmap_conf["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(result_ips(&result), vec!["10.88.0.2"]);
    }

    #[test]
    fn del_runs_in_reverse_and_reports_plugin_error_json() {
        let (_b, cni, net, att) = setup(Some("bridge"));
        let cached = json!({"ips":[{"address":"10.88.0.9/16"}]});
        let err = cni.del(&net, &att, Some(&cached)).unwrap_err().to_string();
        assert!(
            err.contains("no IP addresses available: range full") && err.contains("sb1"),
            "{err}"
        );
        let calls = cni.exec.calls.lock().unwrap();
        assert_eq!(
            calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            vec!["portmap", "bridge"]
        );
        assert_eq!(calls[0].2["prevResult"], cached);
    }

    #[test]
    fn configs_are_validated_and_picked_in_order() {
        assert!(NetworkList::parse(Path::new("x"), r#"{"plugins":[]}"#).is_err());
        assert!(
            NetworkList::parse(Path::new("x"), r#"{"name":"n","plugins":[{"bridge":"x"}]}"#)
                .is_err()
        );
        let single =
            NetworkList::parse(Path::new("x.conf"), r#"{"name":"n","type":"bridge"}"#).unwrap();
        assert_eq!(single.plugins.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NetworkList::load_first(dir.path()),
            Err(CniError::NoConfig(_))
        ));
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"name":"a","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(NetworkList::load_first(dir.path()).unwrap().name, "a");
    }

    #[test]
    fn missing_plugin_is_named() {
        let (_b, cni, _net, att) = setup(None);
        let net = NetworkList::parse(
            Path::new("x"),
            r#"{"name":"n","plugins":[{"type":"flannel"}]}"#,
        )
        .unwrap();
        let err = cni.add(&net, &att).unwrap_err().to_string();
        assert!(err.contains("\"flannel\""), "{err}");
    }
}
