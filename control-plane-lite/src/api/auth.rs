//! Who is calling: bearer tokens (admin, nodes) and client certificates signed by the CA.
//!
//! Node identities follow Kubernetes' Node authorizer: user `system:node:<name>` in group
//! `system:nodes`. A node gets one of two ways:
//!
//! - a client certificate signed by the cluster CA with CN `system:node:<name>` and
//!   O `system:nodes` (see [`crate::pki::issue_node_client_cert`]);
//! - the shared node token (`DATA_DIR/node-token`) bound to a node name and a per-node
//!   password, sent as
//!
//!   ```text
//!   Authorization: Bearer <node-name>:<node-password>:<node-token>
//!   ```
//!
//!   `<node-name>` is a DNS-1123 subdomain (no `:`), `<node-password>` 16 to 256 characters
//!   of `[A-Za-z0-9_.~-]` that the agent generates once (e.g. 32 random bytes, hex) and keeps,
//!   `<node-token>` the contents of the node-token file (trimmed; it may itself contain `:`).
//!   The first request for a node name records a salted SHA-256 of the password in the
//!   Secret `kube-system/<node-name>.node-password.keelson`; later requests for that name must
//!   present the same password or get 401, so a second agent holding the node token cannot
//!   take over an existing node name (the way k3s binds node passwords).
//!
//!   A name is bound on first use only when neither its record nor a Node of that name
//!   exists: a Node that registered with a client certificate (or predates the password
//!   records) has no record, and binding it to whoever holds the node token first would hand
//!   that node over (401, logged as "node \"n1\" exists without a password record"). To let
//!   a re-installed node register with the node token, delete its Node and its record.
//!
//!   First-use bindings are rate limited: when [`NEW_NODE_NAMES_PER_MINUTE`] records were
//!   made in the last minute (their `creationTimestamp`, so the limit holds across replicas
//!   sharing a store), a new name gets 503 until the minute has passed, so a holder of the
//!   node token cannot fill the store with records for made-up names. Bindings of one
//!   server process are serialized, which makes the limit exact for one replica.
//!
//! The node token alone (`Authorization: Bearer <node-token>`) still authenticates, as the
//! bootstrap user `system:bootstrap:keelson-node` (group `system:bootstrappers`), which may
//! only read what every node may read (see [`super::authz`]).

use std::collections::HashMap;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::resources::Resource;
use super::status::ApiError;
use super::{ApiServer, Target};
use crate::store::Pages;

/// The group every node is in.
pub const NODES_GROUP: &str = "system:nodes";
/// A node's user name is this prefix and the node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group whose members may do everything.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group of the node token's bootstrap user.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// Where node passwords are recorded (`<node>.node-password.keelson`).
pub const NODE_PASSWORD_NAMESPACE: &str = "kube-system";
const NODE_PASSWORD_SUFFIX: &str = ".node-password.keelson";
const NODE_PASSWORD_TYPE: &str = "keelson.io/node-password";
/// At most this many node names are bound to a password in any minute.
pub const NEW_NODE_NAMES_PER_MINUTE: usize = 10;

/// Serializes first-use bindings (the rate limit's count and the record's creation).
static FIRST_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn admin() -> User {
        User {
            name: "keelson-admin".into(),
            groups: vec![MASTERS_GROUP.into(), "system:authenticated".into()],
        }
    }

    /// The identity of node `name`.
    pub fn node(name: &str) -> User {
        User {
            name: format!("{NODE_USER_PREFIX}{name}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        }
    }

    /// The holder of the bare node token.
    pub fn node_bootstrap() -> User {
        User {
            name: "system:bootstrap:keelson-node".into(),
            groups: vec![BOOTSTRAPPERS_GROUP.into(), "system:authenticated".into()],
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node this user is, if it is one (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let name = self.name.strip_prefix(NODE_USER_PREFIX)?;
        (!name.is_empty() && self.in_group(NODES_GROUP)).then_some(name)
    }

    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS_GROUP)
    }
}

/// The tokens the server accepts.
#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub node: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

/// What a bearer token says about its holder.
#[derive(Clone, PartialEq, Eq)]
pub enum Bearer {
    /// A user the token alone names (the admin, the node bootstrap user).
    User(User),
    /// The node token bound to a node name; the password still has to be checked.
    Node { name: String, password: String },
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bearer::User(u) => f.debug_tuple("User").field(u).finish(),
            Bearer::Node { name, .. } => f.debug_struct("Node").field("name", name).finish(),
        }
    }
}

/// Why a node's password could not be checked or recorded.
#[derive(Debug, Error)]
pub enum NodePasswordError {
    #[error("node {node:?} is registered with another password")]
    Mismatch { node: String },
    #[error("the password record of node {node:?} is corrupt")]
    Corrupt { node: String },
    #[error(
        "node {node:?} exists without a password record: delete the node to register its name with the node token, or authenticate with its client certificate"
    )]
    Unrecorded { node: String },
    #[error(
        "{limit} node names were registered with the node token in the last minute: retry registering node {node:?} later"
    )]
    TooManyNew { node: String, limit: usize },
    #[error("recording the password of node {node:?}: {source}")]
    Store { node: String, source: ApiError },
}

/// Compares without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A DNS-1123 subdomain, short enough for the password record's name.
pub fn valid_node_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() + NODE_PASSWORD_SUFFIX.len() <= 253
        && name.chars().all(ok_char)
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

fn valid_password(p: &str) -> bool {
    (16..=256).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '~' | '-'))
}

impl Tokens {
    /// What an `Authorization` header value carries, if it is a known token.
    pub fn authenticate(&self, authorization: &str) -> Option<Bearer> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))?
            .trim();
        if token.is_empty() {
            return None;
        }
        if constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            return Some(Bearer::User(User::admin()));
        }
        if constant_time_eq(token.as_bytes(), self.node.as_bytes()) {
            return Some(Bearer::User(User::node_bootstrap()));
        }
        let mut parts = token.splitn(3, ':');
        let (name, password, node_token) = (parts.next()?, parts.next()?, parts.next()?);
        if !constant_time_eq(node_token.as_bytes(), self.node.as_bytes())
            || !valid_node_name(name)
            || !valid_password(password)
        {
            return None;
        }
        Some(Bearer::Node {
            name: name.to_string(),
            password: password.to_string(),
        })
    }
}

/// The user of a client certificate the TLS layer has already verified against the CA:
/// the subject's CN is the name, its O entries the groups.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// `sha256:<salt hex>:<digest hex>` of the password.
fn password_hash(salt: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{salt}:{digest}")
}

fn password_matches(record: &str, password: &str) -> Option<bool> {
    let rest = record.strip_prefix("sha256:")?;
    let (salt, _) = rest.split_once(':')?;
    Some(constant_time_eq(
        password_hash(salt, password).as_bytes(),
        record.as_bytes(),
    ))
}

/// The name of the Secret recording node `node`'s password.
pub fn node_password_secret(node: &str) -> String {
    format!("{node}{NODE_PASSWORD_SUFFIX}")
}

impl ApiServer {
    /// The caller: the client certificate's user, else the bearer token's (checking or
    /// recording a node's password). `Ok(None)`: anonymous or an unknown token.
    pub(super) async fn authenticate(
        &self,
        cert_user: Option<User>,
        authorization: Option<&str>,
    ) -> Result<Option<User>, ApiError> {
        if cert_user.is_some() {
            return Ok(cert_user);
        }
        match authorization.and_then(|a| self.tokens.authenticate(a)) {
            None => Ok(None),
            Some(Bearer::User(u)) => Ok(Some(u)),
            Some(Bearer::Node { name, password }) => {
                match self.check_node_password(&name, &password).await {
                    Ok(()) => Ok(Some(User::node(&name))),
                    Err(
                        e @ (NodePasswordError::Mismatch { .. }
                        | NodePasswordError::Corrupt { .. }
                        | NodePasswordError::Unrecorded { .. }),
                    ) => {
                        tracing::warn!(error = %e, "node credentials refused");
                        Ok(None)
                    }
                    Err(e @ NodePasswordError::TooManyNew { .. }) => {
                        tracing::warn!(error = %e, "node name not bound");
                        Err(ApiError::Unavailable(e.to_string()))
                    }
                    Err(e) => Err(ApiError::Unavailable(e.to_string())),
                }
            }
        }
    }

    /// Checks `password` against node `node`'s record, making the record on first use: only
    /// when no Node `node` exists, and at most [`NEW_NODE_NAMES_PER_MINUTE`] a minute.
    async fn check_node_password(
        &self,
        node: &str,
        password: &str,
    ) -> Result<(), NodePasswordError> {
        let res = Resource::find("", "v1", "secrets").expect("secrets are served");
        let secret = node_password_secret(node);
        let key = res.key(Some(NODE_PASSWORD_NAMESPACE), &secret);
        let store_err = |source: ApiError| NodePasswordError::Store {
            node: node.to_string(),
            source,
        };
        for _ in 0..2 {
            let existing = self
                .store
                .get(&key)
                .await
                .map_err(|e| store_err(ApiError::from_store(e, "secrets", &secret)))?;
            if let Some(kv) = existing {
                let obj: Value =
                    serde_json::from_slice(&kv.value).map_err(|_| NodePasswordError::Corrupt {
                        node: node.to_string(),
                    })?;
                let record = obj["data"]["hash"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| NodePasswordError::Corrupt {
                        node: node.to_string(),
                    })?;
                return match password_matches(&record, password) {
                    Some(true) => Ok(()),
                    Some(false) => Err(NodePasswordError::Mismatch {
                        node: node.to_string(),
                    }),
                    None => Err(NodePasswordError::Corrupt {
                        node: node.to_string(),
                    }),
                };
            }
            if self.has_node_object(node).await.map_err(store_err)? {
                return Err(NodePasswordError::Unrecorded {
                    node: node.to_string(),
                });
            }
            let _serialized = FIRST_USE.lock().await;
            let recent = self.recent_bindings().await.map_err(store_err)?;
            if recent >= NEW_NODE_NAMES_PER_MINUTE {
                return Err(NodePasswordError::TooManyNew {
                    node: node.to_string(),
                    limit: NEW_NODE_NAMES_PER_MINUTE,
                });
            }
            let salt = crate::pki::random_token()[..32].to_string();
            let hash = password_hash(&salt, password);
            let body = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": secret,
                    "namespace": NODE_PASSWORD_NAMESPACE,
                    "labels": {"keelson.io/node": node},
                },
                "type": NODE_PASSWORD_TYPE,
                "data": {"hash": base64::engine::general_purpose::STANDARD.encode(hash)},
            });
            let target = Target {
                res,
                namespace: Some(NODE_PASSWORD_NAMESPACE.into()),
                name: None,
                sub: None,
            };
            match self.create(&target, &HashMap::new(), body).await {
                Ok(_) => {
                    tracing::info!(node, "node password recorded on first use");
                    return Ok(());
                }
                // Another agent registered the name at the same moment: compare with its record.
                Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(NodePasswordError::Mismatch {
            node: node.to_string(),
        })
    }

    /// Whether the Node `node` exists.
    async fn has_node_object(&self, node: &str) -> Result<bool, ApiError> {
        let res = Resource::find("", "v1", "nodes").expect("nodes are served");
        let found = self
            .store
            .get(&res.key(None, node))
            .await
            .map_err(|e| ApiError::from_store(e, "nodes", node))?;
        Ok(found.is_some())
    }

    /// How many password records were made in the last minute.
    async fn recent_bindings(&self) -> Result<usize, ApiError> {
        let res = Resource::find("", "v1", "secrets").expect("secrets are served");
        let prefix = res.prefix(Some(NODE_PASSWORD_NAMESPACE));
        let now = super::object::unix_now();
        let mut count = 0;
        let mut pages = Pages::new(&*self.store, &prefix, 500);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ApiError::from_store(e, "secrets", ""))?;
            for kv in &page.items {
                if !kv.key.ends_with(NODE_PASSWORD_SUFFIX) {
                    continue;
                }
                if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value)
                    && bound_recently(&obj, now)
                {
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

/// Whether `obj` is a node password record made less than a minute before `now` (Unix
/// seconds).
fn bound_recently(obj: &Value, now: i64) -> bool {
    obj["type"].as_str() == Some(NODE_PASSWORD_TYPE)
        && obj["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .is_some_and(|t| now - t.as_second() < 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "0123456789abcdef0123";

    #[test]
    fn tokens() {
        let t = Tokens {
            admin: "aaa".into(),
            node: "nnn".into(),
        };
        assert_eq!(
            t.authenticate("Bearer aaa"),
            Some(Bearer::User(User::admin()))
        );
        assert_eq!(
            t.authenticate("Bearer nnn"),
            Some(Bearer::User(User::node_bootstrap()))
        );
        assert_eq!(
            t.authenticate(&format!("Bearer n1:{PW}:nnn")),
            Some(Bearer::Node {
                name: "n1".into(),
                password: PW.into()
            })
        );
        assert_eq!(t.authenticate(&format!("Bearer n1:{PW}:bad")), None);
        assert_eq!(t.authenticate("Bearer n1:short:nnn"), None);
        assert_eq!(t.authenticate(&format!("Bearer N_1:{PW}:nnn")), None);
        assert_eq!(t.authenticate("Bearer n1:nnn"), None);
        assert_eq!(t.authenticate("Bearer x"), None);
        assert_eq!(t.authenticate("Bearer "), None);
        assert_eq!(t.authenticate("Basic aaa"), None);
    }

    #[test]
    fn node_token_may_contain_colons() {
        let t = Tokens {
            admin: "aaa".into(),
            node: "K10::server:xyz".into(),
        };
        assert_eq!(
            t.authenticate(&format!("Bearer n1.example:{PW}:K10::server:xyz")),
            Some(Bearer::Node {
                name: "n1.example".into(),
                password: PW.into()
            })
        );
    }

    #[test]
    fn users() {
        assert_eq!(User::node("n1").node_name(), Some("n1"));
        assert_eq!(User::node("n1").name, "system:node:n1");
        assert!(!User::node("n1").is_master());
        assert!(User::admin().is_master());
        assert_eq!(User::admin().node_name(), None);
        let not_in_group = User {
            name: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(not_in_group.node_name(), None);
    }

    #[test]
    fn password_hashes() {
        let h = password_hash("salt", PW);
        assert_eq!(password_matches(&h, PW), Some(true));
        assert_eq!(password_matches(&h, "another-password-x"), Some(false));
        assert_eq!(password_matches("md5:x", PW), None);
    }

    #[test]
    fn recent_bindings_are_password_records_of_the_last_minute() {
        let record = |ty: &str, at: &str| json!({"type": ty, "metadata": {"name": "n1.node-password.keelson", "creationTimestamp": at}});
        let now = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert!(bound_recently(
            &record(NODE_PASSWORD_TYPE, "2026-01-01T00:00:00Z"),
            now
        ));
        assert!(bound_recently(
            &record(NODE_PASSWORD_TYPE, "2025-12-31T23:59:01Z"),
            now
        ));
        assert!(!bound_recently(
            &record(NODE_PASSWORD_TYPE, "2025-12-31T23:59:00Z"),
            now
        ));
        assert!(!bound_recently(
            &record("Opaque", "2026-01-01T00:00:00Z"),
            now
        ));
        assert!(!bound_recently(
            &record(NODE_PASSWORD_TYPE, "yesterday"),
            now
        ));
        assert!(!bound_recently(&json!({"type": NODE_PASSWORD_TYPE}), now));
    }

    #[test]
    fn refusals_name_the_node_and_the_way_out() {
        let e = NodePasswordError::Unrecorded { node: "n1".into() };
        assert!(
            e.to_string()
                .starts_with(r#"node "n1" exists without a password record: delete the node"#),
            "{e}"
        );
        let e = NodePasswordError::TooManyNew {
            node: "n9".into(),
            limit: NEW_NODE_NAMES_PER_MINUTE,
        };
        assert_eq!(
            e.to_string(),
            format!(
                r#"{NEW_NODE_NAMES_PER_MINUTE} node names were registered with the node token in the last minute: retry registering node "n9" later"#
            )
        );
    }

    #[test]
    fn client_cert_names_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::load_or_create(dir.path(), "127.0.0.1").unwrap();
        let (cert, _) = crate::pki::issue(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            "jane",
            &["devs"],
            &[],
            true,
        )
        .unwrap();
        let der = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap().1;
        let u = user_from_cert(&der.contents).unwrap();
        assert_eq!(u.name, "jane");
        assert_eq!(u.groups, vec!["devs", "system:authenticated"]);
        let (cert, _) = crate::pki::issue_node_client_cert(&pki, "n1").unwrap();
        let der = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap().1;
        let u = user_from_cert(&der.contents).unwrap();
        assert_eq!(u.node_name(), Some("n1"));
    }
}
