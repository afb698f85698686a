//! Who the container process runs as: a `user[:group]` string (image `User`, or built from the CRI
//! security context) resolved against the rootfs's `/etc/passwd` and `/etc/group`, plus supplementary groups.

/// Why a user or group could not be resolved.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user {0:?}")]
    Invalid(String),
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The entry lines of a passwd/group file: no blank lines, comments or NIS `+`/`-` lines (as libc).
fn entry_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| {
        !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-')
    })
}

/// Parses `/etc/passwd`, skipping comments, NIS `+`/`-` lines and malformed lines (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    entry_lines(text)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// Parses `/etc/group` the same way.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    entry_lines(text)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The passwd name of `uid`, when the image has one (used for `/etc/group` membership).
    pub username: Option<String>,
}

fn numeric(s: &str) -> Option<Result<u32, UserError>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(
            s.parse::<u32>()
                .map_err(|_| UserError::Invalid(s.to_string())),
        )
    } else {
        None
    }
}

/// Resolves `spec`: `""` (root), `name`, `uid`, `name:group`, `uid:gid`, `uid:group`, `name:gid`.
/// A name must exist in the file (a missing file means no names); a number need not. The primary group is
/// the explicit one, else the passwd entry's, else 0.
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<Identity, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() && group.is_some() {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let (uid, entry) = if user.is_empty() {
        (0, passwd.iter().find(|e| e.uid == 0))
    } else if let Some(uid) = numeric(user) {
        let uid = uid?;
        (uid, passwd.iter().find(|e| e.uid == uid))
    } else {
        let e = passwd
            .iter()
            .find(|e| e.name == user)
            .ok_or_else(|| UserError::UnknownUser(user.to_string()))?;
        (e.uid, Some(e))
    };
    let gid = match group {
        None => entry.map_or(0, |e| e.gid),
        Some("") => return Err(UserError::Invalid(spec.to_string())),
        Some(g) => match numeric(g) {
            Some(gid) => gid?,
            None => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
    };
    Ok(Identity {
        uid,
        gid,
        username: entry.map(|e| e.name.clone()),
    })
}

/// The groups `/etc/group` lists `username` as a member of, in file order.
pub fn member_groups(username: &str, groups: &[GroupEntry]) -> Vec<u32> {
    groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m == username))
        .map(|g| g.gid)
        .collect()
}

/// The supplementary group list: the primary group first, then (policy Merge) the image's memberships,
/// then the CRI `supplemental_groups`; duplicates dropped, order kept. Strict skips the image's memberships.
pub fn additional_gids(
    id: &Identity,
    groups: &[GroupEntry],
    cri: &[u32],
    merge_image_groups: bool,
) -> Vec<u32> {
    let mut out = vec![id.gid];
    if merge_image_groups && let Some(name) = &id.username {
        out.extend(member_groups(name, groups));
    }
    out.extend_from_slice(cri);
    let mut seen = std::collections::HashSet::new();
    out.retain(|g| seen.insert(*g));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\n+nis\nwww:x:33:33::/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken line\n";
    const GROUP: &str =
        "root:x:0:\nwww:x:33:\nalice:x:1000:\nwheel:x:10:root,alice\nfifty:x:50000:bob, alice\n";

    fn r(spec: &str) -> Result<Identity, UserError> {
        resolve(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_files() {
        assert_eq!(parse_passwd(PASSWD).len(), 3);
        let g = parse_group(GROUP);
        assert_eq!(g[4].members, vec!["bob", "alice"]);
    }

    #[test]
    fn resolves_user_strings() {
        type Want<'a> = Result<(u32, u32, Option<&'a str>), UserError>;
        let cases: &[(&str, Want)] = &[
            ("", Ok((0, 0, Some("root")))),
            ("alice", Ok((1000, 1000, Some("alice")))),
            ("1000", Ok((1000, 1000, Some("alice")))),
            ("4242", Ok((4242, 0, None))),
            ("1000:33", Ok((1000, 33, Some("alice")))),
            ("www:wheel", Ok((33, 10, Some("www")))),
            ("4242:www", Ok((4242, 33, None))),
            ("nobody", Err(UserError::UnknownUser("nobody".into()))),
            (
                "alice:nogroup",
                Err(UserError::UnknownGroup("nogroup".into())),
            ),
            ("99999999999", Err(UserError::Invalid("99999999999".into()))),
            (":10", Err(UserError::Invalid(":10".into()))),
        ];
        for (spec, want) in cases {
            let got = r(spec).map(|i| (i.uid, i.gid, i.username));
            let want = want.clone().map(|(u, g, n)| (u, g, n.map(String::from)));
            assert_eq!(got, want, "user {spec:?}");
        }
    }

    #[test]
    fn supplementary_groups_merge_and_strict() {
        let groups = parse_group(GROUP);
        let alice = r("alice").unwrap();
        assert_eq!(
            additional_gids(&alice, &groups, &[1234], true),
            vec![1000, 10, 50000, 1234]
        );
        assert_eq!(
            additional_gids(&alice, &groups, &[1234], false),
            vec![1000, 1234]
        );
        assert_eq!(
            additional_gids(&alice, &groups, &[10], false),
            vec![1000, 10]
        );
        let anon = r("4242").unwrap();
        assert_eq!(additional_gids(&anon, &groups, &[], true), vec![0]);
    }
}
