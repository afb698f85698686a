//! `Status`: the RuntimeReady and NetworkReady conditions, computed from what is really there.

use super::CriService;
use keelson_cri::v1::{RuntimeCondition, RuntimeStatus, StatusRequest, StatusResponse};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::Status;

/// Whether a CNI network could be set up from this host's configuration, and if not, why.
pub fn cni_readiness(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<String, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(|e| format!("cannot read CNI config dir {}: {e}", conf_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let first = files
        .first()
        .ok_or_else(|| format!("no CNI network config in {}", conf_dir.display()))?;
    let text = std::fs::read_to_string(first)
        .map_err(|e| format!("cannot read {}: {e}", first.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("invalid CNI config {}: {e}", first.display()))?;
    let plugins: Vec<String> = match v.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list
            .iter()
            .filter_map(|p| p.get("type")?.as_str().map(String::from))
            .collect(),
        None => v
            .get("type")
            .and_then(|t| t.as_str())
            .map(String::from)
            .into_iter()
            .collect(),
    };
    if plugins.is_empty() {
        return Err(format!("CNI config {} names no plugin", first.display()));
    }
    for p in &plugins {
        if !bin_dirs.iter().any(|d| d.join(p).is_file()) {
            return Err(format!(
                "CNI plugin {p:?} (from {}) not found in {bin_dirs:?}",
                first.display()
            ));
        }
    }
    Ok(first.display().to_string())
}

pub async fn handle(svc: &CriService, req: StatusRequest) -> Result<StatusResponse, Status> {
    let runtime = if crate::container::shim::ProcessShim::locate().is_some() {
        RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        }
    } else {
        RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: false,
            reason: "ShimNotFound".into(),
            message: "keelson-shim not found next to keelson-runtime or on PATH".into(),
        }
    };
    let network = match cni_readiness(&svc.config.cni_conf_dir, &svc.config.cni_bin_dirs) {
        Ok(_) => RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(why) => RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: why,
        },
    };
    let mut info = HashMap::new();
    if req.verbose {
        let c = &svc.config;
        info.insert(
            "config".to_string(),
            serde_json::json!({
                "socket": c.socket, "root": c.root, "state": c.state,
                "cniConfDir": c.cni_conf_dir, "cniBinDirs": c.cni_bin_dirs,
                "insecureRegistries": c.insecure_registries,
                "registryConfigDir": c.registry_config_dir,
                "registryCredentials": c.registry_credentials,
                "cgroupDriver": format!("{:?}", c.cgroup_driver).to_lowercase(),
            })
            .to_string(),
        );
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers: Vec::new(),
        features: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_readiness_checks_config_and_plugins() {
        let conf = tempfile::tempdir().unwrap();
        let bins = tempfile::tempdir().unwrap();
        let dirs = vec![bins.path().to_path_buf()];
        assert!(
            cni_readiness(conf.path(), &dirs)
                .unwrap_err()
                .contains("no CNI network config")
        );
        std::fs::write(
            conf.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        assert!(
            cni_readiness(conf.path(), &dirs)
                .unwrap_err()
                .contains("\"bridge\"")
        );
        std::fs::write(bins.path().join("bridge"), b"").unwrap();
        std::fs::write(bins.path().join("portmap"), b"").unwrap();
        assert!(
            cni_readiness(conf.path(), &dirs)
                .unwrap()
                .ends_with("10-net.conflist")
        );
    }
}
