//! Image references (`busybox`, `quay.io/org/app:v1@sha256:…`): parsing and Docker's "familiar" normalisation.
//!
//! The grammar follows the distribution reference grammar used by Docker and containerd:
//! `[host[:port]/]path[:tag][@digest]`, where the first path component is a registry host only
//! if it contains `.` or `:` or is `localhost`; otherwise the image lives on Docker Hub, and a
//! single-component Hub name gets the `library/` prefix.

use crate::image::digest::{Digest, DigestError};
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest `registry/repository` Docker accepts.
pub const NAME_MAX_LEN: usize = 255;
/// Longest tag Docker accepts.
pub const TAG_MAX_LEN: usize = 128;

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, possibly with a port; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// The tag; `latest` when the input named neither tag nor digest.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a string is not a valid image reference. Each variant names the part that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: empty")]
    Empty { input: String },
    #[error("invalid image reference {input:?}: invalid registry host {host:?}")]
    InvalidHost { input: String, host: String },
    #[error("invalid image reference {input:?}: repository name is empty")]
    EmptyRepository { input: String },
    #[error(
        "invalid image reference {input:?}: repository {repository:?} has an empty path component"
    )]
    EmptyComponent { input: String, repository: String },
    #[error("invalid image reference {input:?}: repository {repository:?} must be lowercase")]
    UppercaseRepository { input: String, repository: String },
    #[error(
        "invalid image reference {input:?}: invalid repository path component {component:?} \
         (expected lowercase letters and digits separated by '.', '_', '__' or dashes)"
    )]
    InvalidComponent { input: String, component: String },
    #[error(
        "invalid image reference {input:?}: invalid tag {tag:?} \
         (expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
    )]
    InvalidTag { input: String, tag: String },
    #[error("invalid image reference {input:?}: {source}")]
    InvalidDigest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error(
        "invalid image reference {input:?}: name is {len} characters long, the limit is {NAME_MAX_LEN}"
    )]
    NameTooLong { input: String, len: usize },
    #[error(
        "invalid image reference {input:?}: a 64-character hex string is an image id, not a repository name"
    )]
    ImageId { input: String },
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` / `crictl pull` accept it.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let input = || s.to_string();
        if s.is_empty() {
            return Err(ReferenceError::Empty { input: input() });
        }

        // The digest is everything after the first '@'; digests never contain '@'.
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|source| ReferenceError::InvalidDigest {
                    input: input(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };

        // A tag follows the last ':' only if that ':' comes after the last '/', so that
        // `localhost:5000/app` is a host with a port, not a tag.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(ReferenceError::InvalidTag {
                input: input(),
                tag: tag.to_string(),
            });
        }
        if name.is_empty() {
            return Err(ReferenceError::EmptyRepository { input: input() });
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, remainder)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, remainder)
            }
            _ => (DOCKER_HUB, name),
        };
        if registry != DOCKER_HUB && !is_valid_host(registry) {
            return Err(ReferenceError::InvalidHost {
                input: input(),
                host: registry.to_string(),
            });
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };

        if registry == DOCKER_HUB && name == path && is_hex64(path) {
            return Err(ReferenceError::ImageId { input: input() });
        }
        validate_repository(s, path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };

        let len = registry.len() + 1 + repository.len();
        if len > NAME_MAX_LEN {
            return Err(ReferenceError::NameTooLong {
                input: input(),
                len,
            });
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@<d>`.
    pub fn digested(&self, d: &Digest) -> String {
        format!("{}@{d}", self.name())
    }

    /// The host that serves the registry API for this reference.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// What goes in `/v2/<repository>/manifests/<reference>`: the digest if present, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn validate_repository(input: &str, path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(ReferenceError::EmptyRepository {
            input: input.to_string(),
        });
    }
    if path.split('/').any(str::is_empty) {
        return Err(ReferenceError::EmptyComponent {
            input: input.to_string(),
            repository: path.to_string(),
        });
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository {
            input: input.to_string(),
            repository: path.to_string(),
        });
    }
    match path.split('/').find(|c| !is_valid_component(c)) {
        Some(component) => Err(ReferenceError::InvalidComponent {
            input: input.to_string(),
            component: component.to_string(),
        }),
        None => Ok(()),
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn is_valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        // One run of alphanumerics.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // One separator: '.', '_', '__' or any number of '-'.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub(crate) fn is_valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = t.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX_LEN
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `domain-name[:port]` or `[ipv6][:port]`.
fn is_valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(h), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return false;
    }
    match host {
        None => true,
        Some(host) => !host.is_empty() && host.split('.').all(is_valid_domain_component),
    }
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn is_valid_domain_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_valid_references() {
        // `{D}` in an input stands for the digest `D`; a `true` digest column expects `D`.
        // (input, registry, repository, tag, digest)
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("busybox",                       "docker.io",            "library/busybox", Some("latest"), false),
            ("busybox:1.36",                  "docker.io",            "library/busybox", Some("1.36"), false),
            ("user/app",                      "docker.io",            "user/app", Some("latest"), false),
            ("user/app:v1",                   "docker.io",            "user/app", Some("v1"), false),
            ("docker.io/busybox",             "docker.io",            "library/busybox", Some("latest"), false),
            ("docker.io/library/busybox",     "docker.io",            "library/busybox", Some("latest"), false),
            ("index.docker.io/busybox",       "docker.io",            "library/busybox", Some("latest"), false),
            ("index.docker.io/user/app:x",    "docker.io",            "user/app", Some("x"), false),
            ("quay.io/org/app",               "quay.io",              "org/app", Some("latest"), false),
            ("quay.io/org/sub/app:v1.2-rc_3", "quay.io",              "org/sub/app", Some("v1.2-rc_3"), false),
            ("localhost/app",                 "localhost",            "app", Some("latest"), false),
            ("localhost:5000/app:dev",        "localhost:5000",       "app", Some("dev"), false),
            ("127.0.0.1:5000/a/b",            "127.0.0.1:5000",       "a/b", Some("latest"), false),
            ("myhost:5000/app",               "myhost:5000",          "app", Some("latest"), false),
            ("[::1]:5000/app:t",              "[::1]:5000",           "app", Some("t"), false),
            ("[fe80::1]/app",                 "[fe80::1]",            "app", Some("latest"), false),
            ("Registry.Example.COM/app",      "Registry.Example.COM", "app", Some("latest"), false),
            ("localhost:5000",                "docker.io",            "library/localhost", Some("5000"), false),
            ("busybox@{D}",                   "docker.io",            "library/busybox", None, true),
            ("busybox:1.36@{D}",              "docker.io",            "library/busybox", Some("1.36"), true),
            ("localhost:5000/a@{D}",          "localhost:5000",       "a", None, true),
            ("a_b/c__d/e-f/g---h/i.j",        "docker.io",            "a_b/c__d/e-f/g---h/i.j", Some("latest"), false),
            ("app:_underscore",               "docker.io",            "library/app", Some("_underscore"), false),
            ("app:UPPER.case-1",              "docker.io",            "library/app", Some("UPPER.case-1"), false),
        ];
        for &(input, registry, repository, tag, digest) in cases {
            let input = input.replace("{D}", D);
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, registry, "{input}");
            assert_eq!(r.repository, repository, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(
                r.digest.as_ref().map(Digest::as_str),
                digest.then_some(D),
                "{input}"
            );
            // The display form is a fixed point of parsing.
            let again = Reference::parse(&r.to_string()).unwrap();
            assert_eq!(again, r, "{input}");
        }
    }

    #[test]
    fn rejects_invalid_references() {
        use ReferenceError as E;
        type Check = fn(&ReferenceError) -> bool;
        #[rustfmt::skip]
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty { .. })),
            ("Busybox", |e| matches!(e, E::UppercaseRepository { .. })),
            ("quay.io/Org/app", |e| matches!(e, E::UppercaseRepository { .. })),
            ("Foo/bar", |e| matches!(e, E::UppercaseRepository { .. })),
            ("quay.io//app", |e| matches!(e, E::EmptyComponent { .. })),
            ("user/app/", |e| matches!(e, E::EmptyComponent { .. })),
            ("/app", |e| matches!(e, E::EmptyComponent { .. })),
            ("quay.io/", |e| matches!(e, E::EmptyRepository { .. })),
            (":tag", |e| matches!(e, E::EmptyRepository { .. })),
            ("@{D}", |e| matches!(e, E::EmptyRepository { .. })),
            ("app-/x", |e| matches!(e, E::InvalidComponent { component, .. } if component == "app-")),
            ("a..b", |e| matches!(e, E::InvalidComponent { .. })),
            ("a___b", |e| matches!(e, E::InvalidComponent { .. })),
            ("_a", |e| matches!(e, E::InvalidComponent { .. })),
            ("a b", |e| matches!(e, E::InvalidComponent { .. })),
            ("app:", |e| matches!(e, E::InvalidTag { .. })),
            ("app:-x", |e| matches!(e, E::InvalidTag { .. })),
            ("app:.x", |e| matches!(e, E::InvalidTag { .. })),
            ("app:a+b", |e| matches!(e, E::InvalidTag { .. })),
            ("app:a/b", |e| matches!(e, E::InvalidHost { .. })),
            ("app@sha256:abc", |e| matches!(e, E::InvalidDigest { .. })),
            ("app@sha256", |e| matches!(e, E::InvalidDigest { .. })),
            ("app@md5:d41d8cd98f00b204e9800998ecf8427e", |e| matches!(e, E::InvalidDigest { .. })),
            ("app:1@", |e| matches!(e, E::InvalidDigest { .. })),
            ("app@{D}@{D}", |e| matches!(e, E::InvalidDigest { .. })),
            ("-host.io/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host-.io/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host..io/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host.io:/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host.io:99999/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host.io:5a/app", |e| matches!(e, E::InvalidHost { .. })),
            ("host_x.io/app", |e| matches!(e, E::InvalidHost { .. })),
            ("[::1/app", |e| matches!(e, E::InvalidHost { .. })),
            ("[zz::1]:5000/app", |e| matches!(e, E::InvalidHost { .. })),
            ("[::1]x/app", |e| matches!(e, E::InvalidHost { .. })),
            ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", |e| matches!(e, E::ImageId { .. })),
        ];
        for &(input, check) in cases {
            let input = &*input.replace("{D}", D);
            match Reference::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r}"),
                Err(e) => {
                    assert!(check(&e), "{input:?}: unexpected error {e:?}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("{input:?}")),
                        "{msg} does not quote the input"
                    );
                    assert!(msg.starts_with("invalid image reference"), "{msg}");
                }
            }
        }
    }

    #[test]
    fn length_limits() {
        let tag = "t".repeat(TAG_MAX_LEN);
        assert!(Reference::parse(&format!("app:{tag}")).is_ok());
        let tag = "t".repeat(TAG_MAX_LEN + 1);
        assert!(matches!(
            Reference::parse(&format!("app:{tag}")),
            Err(ReferenceError::InvalidTag { .. })
        ));

        // docker.io/ + library/ = 18 characters of prefix.
        let ok = "a".repeat(NAME_MAX_LEN - "docker.io/library/".len());
        assert!(Reference::parse(&ok).is_ok());
        let long = format!("{ok}b");
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::NameTooLong { len: 256, .. })
        ));
    }

    #[test]
    fn accessors() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(
            r.tagged().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let d = Digest::parse(D).unwrap();
        assert_eq!(r.digested(&d), format!("docker.io/library/busybox@{D}"));

        let r = Reference::parse(&format!("localhost:5000/a/b:v2@{D}")).unwrap();
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.reference(), D);
        assert_eq!(r.tagged().as_deref(), Some("localhost:5000/a/b:v2"));
        assert_eq!(r.to_string(), format!("localhost:5000/a/b:v2@{D}"));

        let r = Reference::parse(&format!("quay.io/x@{D}")).unwrap();
        assert_eq!(r.tagged(), None);
        assert_eq!(r.to_string(), format!("quay.io/x@{D}"));
        assert_eq!(
            "quay.io/x".parse::<Reference>().unwrap().reference(),
            "latest"
        );
    }

    #[test]
    fn component_grammar() {
        for ok in [
            "a",
            "a0",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a.b_c__d-e",
            "0",
        ] {
            assert!(is_valid_component(ok), "{ok}");
        }
        for bad in [
            "", ".a", "a.", "a_", "a__", "a___b", "a._b", "a-.b", "a-", "-a", "A", "a/b",
        ] {
            assert!(!is_valid_component(bad), "{bad}");
        }
    }
}
