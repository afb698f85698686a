//! `Status`: the RuntimeReady and NetworkReady conditions, computed from what is really there.

use super::CriService;
use crate::sandbox::cni::NetworkList;
use keelson_cri::v1::{RuntimeCondition, RuntimeStatus, StatusRequest, StatusResponse};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::Status;

/// Whether a CNI network could be set up from this host's configuration, and if not, why: the
/// network RunPodSandbox would use (the CNI module picks it) and every plugin it names.
pub fn cni_readiness(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<String, String> {
    let net = NetworkList::load_first(conf_dir).map_err(|e| e.to_string())?;
    for plugin in net.plugins.iter().filter_map(|p| p.get("type")?.as_str()) {
        if !bin_dirs.iter().any(|d| d.join(plugin).is_file()) {
            return Err(format!(
                "CNI plugin {plugin:?} (from {}) not found in {bin_dirs:?}",
                net.path.display()
            ));
        }
    }
    Ok(net.path.display().to_string())
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
