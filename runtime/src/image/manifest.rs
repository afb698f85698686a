//! OCI and Docker schema 2 manifests, indexes and image configs: just the fields a node needs, parsed leniently.

use crate::image::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Largest manifest or config blob we accept (containerd uses 4 MiB for manifests too).
pub const MAX_METADATA_BLOB: u64 = 8 << 20;

/// Why a manifest, index or config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid {what} {digest}: {message}")]
    Invalid {
        what: &'static str,
        digest: Digest,
        message: String,
    },
    #[error("unsupported manifest media type {media_type:?} for {digest}")]
    UnsupportedMediaType { media_type: String, digest: Digest },
    #[error("no manifest for platform {wanted} in index {digest} (it has: {available})")]
    NoMatchingPlatform {
        wanted: String,
        digest: Digest,
        available: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host, in OCI's (GOARCH) names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        }
    }

    fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        // arm64 images are usually published without a variant; treat a missing one as a match.
        match (&self.variant, &other.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A manifest as fetched: either a single image or an index of them.
#[derive(Debug)]
pub enum Parsed {
    Image(ImageManifest),
    Index(Index),
}

/// Parses a manifest by its media type; a missing or generic type is decided by the JSON's shape.
pub fn parse_manifest(
    media_type: &str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<Parsed, ManifestError> {
    let invalid = |e: serde_json::Error| ManifestError::Invalid {
        what: "manifest",
        digest: digest.clone(),
        message: e.to_string(),
    };
    match media_type {
        OCI_INDEX | DOCKER_LIST => {
            return serde_json::from_slice(bytes)
                .map(Parsed::Index)
                .map_err(invalid);
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            return serde_json::from_slice(bytes)
                .map(Parsed::Image)
                .map_err(invalid);
        }
        "" | "application/json" | "text/plain" | "application/octet-stream" => {}
        other => {
            return Err(ManifestError::UnsupportedMediaType {
                media_type: other.into(),
                digest: digest.clone(),
            });
        }
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str())
        && !mt.is_empty()
        && mt != media_type
    {
        return parse_manifest(mt, digest, bytes);
    }
    if v.get("manifests").is_some() {
        serde_json::from_value(v)
            .map(Parsed::Index)
            .map_err(invalid)
    } else if v.get("config").is_some() {
        serde_json::from_value(v)
            .map(Parsed::Image)
            .map_err(invalid)
    } else {
        Err(ManifestError::Invalid {
            what: "manifest",
            digest: digest.clone(),
            message: "neither an image manifest nor an index".into(),
        })
    }
}

impl Index {
    /// The entry for `want`, first match in index order, as containerd picks.
    pub fn select(
        &self,
        want: &Platform,
        index_digest: &Digest,
    ) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
            .ok_or_else(|| ManifestError::NoMatchingPlatform {
                wanted: want.to_string(),
                digest: index_digest.clone(),
                available: {
                    let v: Vec<String> = self
                        .manifests
                        .iter()
                        .map(|d| {
                            d.platform
                                .as_ref()
                                .map_or("unknown".to_string(), ToString::to_string)
                        })
                        .collect();
                    if v.is_empty() {
                        "nothing".into()
                    } else {
                        v.join(", ")
                    }
                },
            })
    }
}

/// The image config's `config` section (Docker's capitalised keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// Parses an image config and checks that it describes as many layers as the manifest has.
pub fn parse_config(
    digest: &Digest,
    bytes: &[u8],
    layer_count: usize,
) -> Result<ImageConfigFile, ManifestError> {
    let cfg: ImageConfigFile =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid {
            what: "image config",
            digest: digest.clone(),
            message: e.to_string(),
        })?;
    if cfg.rootfs.kind != "layers" {
        return Err(ManifestError::Invalid {
            what: "image config",
            digest: digest.clone(),
            message: format!("rootfs type {:?} is not \"layers\"", cfg.rootfs.kind),
        });
    }
    if cfg.rootfs.diff_ids.len() != layer_count {
        return Err(ManifestError::Invalid {
            what: "image config",
            digest: digest.clone(),
            message: format!(
                "it lists {} diff_ids but the manifest has {} layers",
                cfg.rootfs.diff_ids.len(),
                layer_count
            ),
        });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn index_selects_host_platform_in_order() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d("arm"),
            d("amd")
        );
        let Parsed::Index(idx) = parse_manifest(OCI_INDEX, &d("i"), json.as_bytes()).unwrap()
        else {
            panic!()
        };
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(idx.select(&amd, &d("i")).unwrap().digest, d("amd"));
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        let err = idx.select(&s390, &d("i")).unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn generic_media_type_is_decided_by_shape() {
        let json = format!(
            r#"{{"config":{{"digest":"{}","size":3}},"layers":[]}}"#,
            d("c")
        );
        assert!(matches!(
            parse_manifest("", &d("m"), json.as_bytes()).unwrap(),
            Parsed::Image(_)
        ));
        assert!(
            parse_manifest(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                &d("m"),
                b"{}"
            )
            .is_err()
        );
    }

    #[test]
    fn config_layer_count_must_match() {
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d("l")
        );
        assert!(parse_config(&d("c"), json.as_bytes(), 1).is_ok());
        let err = parse_config(&d("c"), json.as_bytes(), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 diff_ids") && err.contains("2 layers"),
            "{err}"
        );
    }
}
