//! Who is calling: bearer tokens (admin, node) and client certificates signed by the CA.

use x509_parser::prelude::{FromDer, X509Certificate};

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
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn node() -> User {
        User {
            name: "system:node".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
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

/// Compares without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The user an `Authorization` header value names, if it carries a known token.
    pub fn authenticate(&self, authorization: &str) -> Option<User> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))?
            .trim();
        if token.is_empty() {
            return None;
        }
        if constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            Some(User::admin())
        } else if constant_time_eq(token.as_bytes(), self.node.as_bytes()) {
            Some(User::node())
        } else {
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = Tokens {
            admin: "aaa".into(),
            node: "nnn".into(),
        };
        assert_eq!(t.authenticate("Bearer aaa"), Some(User::admin()));
        assert_eq!(t.authenticate("Bearer nnn"), Some(User::node()));
        assert_eq!(t.authenticate("Bearer x"), None);
        assert_eq!(t.authenticate("Bearer "), None);
        assert_eq!(t.authenticate("Basic aaa"), None);
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
    }
}
