//! The server's credentials on disk: a CA, a serving certificate, the admin and node tokens,
//! and `admin.kubeconfig`. Made on first start, reused afterwards.
//!
//! ```text
//! DATA_DIR/pki/ca.crt, ca.key (0600)          the cluster CA
//! DATA_DIR/pki/server.crt, server.key (0600)  serving certificate; server.sans lists its SANs
//! DATA_DIR/pki/admin.token (0600)             the admin bearer token
//! DATA_DIR/node-token (0600)                  the token agents present (see api::auth)
//! DATA_DIR/admin.kubeconfig (0600)            kubectl --kubeconfig works with it as is
//! ```
//!
//! Certificates made in memory, never written: node client certificates for tests
//! ([`issue_node_client_cert`]) and, at each start, the client certificate the server
//! presents to node agents ([`issue_kubelet_client_cert`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use thiserror::Error;

/// Why the server's credentials could not be loaded or made.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Cert {
        what: what.to_string(),
        source,
    }
}

/// Writes `contents` to `path` with mode `mode`, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// A random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("system randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Everything the server and its clients need, in PEM.
#[derive(Clone)]
pub struct Pki {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_token: String,
    pub node_token: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pki { .. }")
    }
}

fn read_or<F>(path: &Path, mode: u32, make: F) -> Result<String, PkiError>
where
    F: FnOnce() -> Result<String, PkiError>,
{
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => {
            let s = make()?;
            write_private(path, s.as_bytes(), mode)?;
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = make()?;
            write_private(path, s.as_bytes(), mode)?;
            Ok(s)
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("ca params"))?;
    p.distinguished_name.push(DnType::CommonName, "keelson-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// SANs of the serving certificate for `listen_host`.
pub fn server_sans(listen_host: &str) -> Vec<String> {
    let mut sans: Vec<String> = vec!["127.0.0.1".into(), "localhost".into(), "::1".into()];
    let host = listen_host.trim_start_matches('[').trim_end_matches(']');
    if !host.is_empty() && host != "0.0.0.0" && host != "::" && !sans.iter().any(|s| s == host) {
        sans.push(host.to_string());
    }
    sans
}

/// Signs a leaf certificate with the CA. `client` makes a client-auth certificate for
/// `common_name` in `organizations`; otherwise a serving certificate for `sans`.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    client: bool,
) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(cert_err("ca key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(cert_err("ca cert"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("leaf params"))?;
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(cert_err(s)),
        })
        .collect::<Result<_, _>>()?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    for o in organizations {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate().map_err(cert_err("leaf key"))?;
    let cert = p.signed_by(&key, &issuer).map_err(cert_err(common_name))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The common name of the client certificate the server presents to node agents; agents
/// accept proxied requests (logs, exec, attach, port-forward, nodes/proxy) from it.
pub const KUBELET_CLIENT_CN: &str = "keelson-apiserver-kubelet-client";
/// The organisation of that certificate (deliberately not `system:masters`: presented back
/// to the API server it is only a read-only user).
pub const KUBELET_CLIENT_ORG: &str = "keelson:apiservers";

/// A client certificate (PEM cert, PEM key) for node `node`: CN `system:node:<node>`,
/// O `system:nodes`, the identity the API server authorizes as that node.
pub fn issue_node_client_cert(pki: &Pki, node: &str) -> Result<(String, String), PkiError> {
    issue(
        &pki.ca_cert_pem,
        &pki.ca_key_pem,
        &format!("system:node:{node}"),
        &["system:nodes"],
        &[],
        true,
    )
}

/// The client certificate the server presents to node agents (CN [`KUBELET_CLIENT_CN`]).
pub fn issue_kubelet_client_cert(pki: &Pki) -> Result<(String, String), PkiError> {
    issue(
        &pki.ca_cert_pem,
        &pki.ca_key_pem,
        KUBELET_CLIENT_CN,
        &[KUBELET_CLIENT_ORG],
        &[],
        true,
    )
}

impl Pki {
    /// Loads the credentials under `data_dir`, making what is missing. The serving
    /// certificate is re-issued when `listen_host` needs SANs it lacks.
    pub fn load_or_create(data_dir: &Path, listen_host: &str) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let ca_key_path = dir.join("ca.key");
        let ca_cert_path = dir.join("ca.crt");
        let (ca_cert_pem, ca_key_pem) = if ca_key_path.exists() && ca_cert_path.exists() {
            (
                fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?,
                fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?,
            )
        } else {
            let key = KeyPair::generate().map_err(cert_err("ca key"))?;
            let cert = ca_params()?
                .self_signed(&key)
                .map_err(cert_err("ca certificate"))?;
            let (c, k) = (cert.pem(), key.serialize_pem());
            write_private(&ca_key_path, k.as_bytes(), 0o600)?;
            write_private(&ca_cert_path, c.as_bytes(), 0o644)?;
            (c, k)
        };
        let sans = server_sans(listen_host);
        let sans_path = dir.join("server.sans");
        let key_path = dir.join("server.key");
        let cert_path = dir.join("server.crt");
        let have = fs::read_to_string(&sans_path).unwrap_or_default();
        let (server_cert_pem, server_key_pem) =
            if have.trim() == sans.join(",") && key_path.exists() && cert_path.exists() {
                (
                    fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
                    fs::read_to_string(&key_path).map_err(io(&key_path))?,
                )
            } else {
                let (c, k) = issue(
                    &ca_cert_pem,
                    &ca_key_pem,
                    "keelson-server",
                    &[],
                    &sans,
                    false,
                )?;
                write_private(&key_path, k.as_bytes(), 0o600)?;
                write_private(&cert_path, c.as_bytes(), 0o644)?;
                write_private(&sans_path, sans.join(",").as_bytes(), 0o644)?;
                (c, k)
            };
        let admin_token = read_or(&dir.join("admin.token"), 0o600, || Ok(random_token()))?;
        let node_token = read_or(&data_dir.join("node-token"), 0o600, || Ok(random_token()))?;
        Ok(Pki {
            ca_cert_pem,
            ca_key_pem,
            server_cert_pem,
            server_key_pem,
            admin_token,
            node_token,
        })
    }

    /// A kubeconfig for the admin at `server_url`.
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_cert_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: admin\ncurrent-context: keelson\n",
            self.admin_token
        )
    }

    /// Writes `DATA_DIR/admin.kubeconfig` for `server_url`.
    pub fn write_admin_kubeconfig(
        &self,
        data_dir: &Path,
        server_url: &str,
    ) -> Result<(), PkiError> {
        write_private(
            &data_dir.join("admin.kubeconfig"),
            self.admin_kubeconfig(server_url).as_bytes(),
            0o600,
        )
    }
}

/// The `https://` URL clients use for a listen address (wildcards become loopback).
pub fn server_url(listen: &std::net::SocketAddr) -> String {
    let ip = listen.ip();
    let host = if ip.is_unspecified() {
        if ip.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("https://{host}:{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_and_restart_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), "127.0.0.1").unwrap();
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Pki::load_or_create(dir.path(), "127.0.0.1").unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.node_token, b.node_token);
        let c = Pki::load_or_create(dir.path(), "10.1.2.3").unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
        assert!(
            a.admin_kubeconfig("https://127.0.0.1:1")
                .contains(&a.admin_token)
        );
    }

    #[test]
    fn sans_and_urls() {
        assert_eq!(server_sans("0.0.0.0").len(), 3);
        assert_eq!(server_sans("10.0.0.1")[3], "10.0.0.1");
        assert_eq!(
            server_url(&"0.0.0.0:6443".parse().unwrap()),
            "https://127.0.0.1:6443"
        );
        assert_eq!(server_url(&"[::1]:1".parse().unwrap()), "https://[::1]:1");
    }
}
