//! Pure readers for what an exec needs to know about the container's init and rootfs: cgroup
//! membership (`/proc/PID/cgroup` against `/proc/self/mountinfo`), `HOME` from the container's
//! `/etc/passwd`, the environment with overrides, and `PATH` lookup. No I/O here except through
//! the callers' arguments, so all of it is unit-tested.

use std::path::{Path, PathBuf};

/// `PATH` when the container's environment has none (what `execvp` would search, widened to the
/// usual sbin directories like runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    pub hierarchy: String,
    /// v1 controllers (`cpu`, `cpuacct`, `name=systemd`, ...); empty for the v2 hierarchy.
    pub controllers: Vec<String>,
    /// Absolute, relative to the reader's cgroup namespace root.
    pub path: String,
}

impl CgroupEntry {
    /// The unified (v2) hierarchy: id 0, no controllers.
    pub fn is_unified(&self) -> bool {
        self.hierarchy == "0" && self.controllers.is_empty()
    }

    /// Whether this cgroup is `rel` (a path relative to the hierarchy root) or below it.
    pub fn is_within(&self, rel: &Path) -> bool {
        let own = Path::new(self.path.trim_start_matches('/'));
        own.starts_with(rel)
    }
}

/// The entries of a `/proc/PID/cgroup` file; malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupEntry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.to_owned();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?.to_owned();
            path.starts_with('/').then_some(CgroupEntry {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// Whether a process with `entries` is in the container's cgroup: `literal` is `cgroupsPath` as
/// libcontainer's cgroupfs driver uses it (relative to each hierarchy root); a systemd-style
/// `slice:prefix:name` also matches its unit `prefix-name.scope` anywhere in the path, in case a
/// systemd driver placed the container.
pub fn in_container_cgroup(
    entries: &[CgroupEntry],
    literal: &Path,
    cgroups_path: Option<&Path>,
) -> bool {
    let scope = cgroups_path
        .and_then(|p| p.to_str())
        .filter(|p| !p.contains('/'))
        .and_then(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            (parts.len() == 3).then(|| format!("{}-{}.scope", parts[1], parts[2]))
        });
    entries.iter().any(|e| {
        e.is_within(literal)
            || scope
                .as_deref()
                .is_some_and(|s| e.path.split('/').any(|component| component == s))
    })
}

/// A cgroup file system mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup shown at the mount point (`/` unless a sub-tree was mounted).
    pub root: String,
    pub mount_point: PathBuf,
    /// `cgroup2` rather than `cgroup`.
    pub unified: bool,
    /// Super options: for v1 the controllers (and `name=...`) of the hierarchy.
    pub options: Vec<String>,
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup (v1 and v2) mounts listed in a mountinfo file.
pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut tail = after.split(' ');
            let fstype = tail.next()?;
            let unified = match fstype {
                "cgroup" => false,
                "cgroup2" => true,
                _ => return None,
            };
            let _source = tail.next()?;
            let options = tail
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(CgroupMount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                unified,
                options,
            })
        })
        .collect()
}

/// The directory of `entry`'s cgroup in this mount namespace, if one of `mounts` shows it.
pub fn cgroup_dir(entry: &CgroupEntry, mounts: &[CgroupMount]) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| {
            if entry.is_unified() {
                m.unified
            } else {
                !m.unified && entry.controllers.iter().any(|c| m.options.contains(c))
            }
        })
        .find_map(|m| {
            let rel = Path::new(&entry.path).strip_prefix(&m.root).ok()?;
            Some(m.mount_point.join(rel))
        })
}

/// The home directory of `uid` in an `/etc/passwd` file (`name:pw:uid:gid:gecos:home:shell`).
pub fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[2].parse::<u32>().ok()? != uid {
            return None;
        }
        Some(fields[5].to_owned()).filter(|h| !h.is_empty())
    })
}

/// The spec's environment with `overrides` replacing (or adding) variables, in order.
pub fn merge_env(base: &[String], overrides: &[(String, String)]) -> Vec<String> {
    let overridden = |entry: &String| {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        overrides.iter().any(|(k, _)| k == key)
    };
    let mut env: Vec<String> = base.iter().filter(|e| !overridden(e)).cloned().collect();
    for (i, (key, value)) in overrides.iter().enumerate() {
        // A key given twice: the last value wins.
        if overrides[i + 1..].iter().all(|(k, _)| k != key) {
            env.push(format!("{key}={value}"));
        }
    }
    env
}

/// The value of `key` in a `K=V` list.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|e| {
        let (k, v) = e.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Where `execvp` would find `name`: itself when it contains a `/`, else the first entry of
/// `path` (`:`-separated; an empty entry is the working directory) holding an executable file.
pub fn find_executable(
    name: &str,
    path: &str,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "\
12:pids:/keelson-test/c1
11:cpu,cpuacct:/keelson-test/c1
10:memory:/keelson-test/c1
1:name=systemd:/user.slice
0::/
";

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
39 33 0:34 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
40 33 0:35 /sub /mnt/my\\040pids rw,nosuid shared:16 - cgroup cgroup rw,pids
";

    #[test]
    fn parses_proc_cgroup() {
        let entries = parse_proc_cgroup(HYBRID_CGROUP);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(entries[3].controllers, vec!["name=systemd"]);
        assert!(entries[4].is_unified());
        assert!(!entries[0].is_unified());
        assert!(entries[0].is_within(Path::new("keelson-test/c1")));
        assert!(entries[0].is_within(Path::new("keelson-test")));
        assert!(!entries[0].is_within(Path::new("keelson-test/c")));
        assert!(parse_proc_cgroup("garbage\n3:x:relative\n").is_empty());
    }

    #[test]
    fn recognises_the_container_cgroup() {
        let entries = parse_proc_cgroup(HYBRID_CGROUP);
        let literal = Path::new("keelson-test/c1");
        assert!(in_container_cgroup(
            &entries,
            literal,
            Some(Path::new("/keelson-test/c1"))
        ));
        assert!(!in_container_cgroup(
            &entries,
            Path::new("keelson-test/c2"),
            Some(Path::new("/keelson-test/c2"))
        ));
        let systemd =
            parse_proc_cgroup("0::/kubepods.slice/kubepods-pod1.slice/cri-keelson-abc.scope\n");
        let path = Path::new("kubepods-pod1.slice:cri-keelson:abc");
        assert!(in_container_cgroup(&systemd, path, Some(path)));
        let other = Path::new("kubepods-pod1.slice:cri-keelson:abd");
        assert!(!in_container_cgroup(&systemd, other, Some(other)));
    }

    #[test]
    fn maps_entries_to_directories() {
        let mounts = parse_cgroup_mounts(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 5, "{mounts:?}");
        let entries = parse_proc_cgroup(HYBRID_CGROUP);
        let dirs: Vec<Option<PathBuf>> = entries.iter().map(|e| cgroup_dir(e, &mounts)).collect();
        assert_eq!(
            dirs,
            vec![
                // mounted with root /sub: /keelson-test/c1 is not below it
                None,
                Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/keelson-test/c1")),
                Some(PathBuf::from("/sys/fs/cgroup/memory/keelson-test/c1")),
                Some(PathBuf::from("/sys/fs/cgroup/systemd/user.slice")),
                Some(PathBuf::from("/sys/fs/cgroup/unified/")),
            ]
        );
        let sub = CgroupEntry {
            hierarchy: "12".into(),
            controllers: vec!["pids".into()],
            path: "/sub/c2".into(),
        };
        assert_eq!(
            cgroup_dir(&sub, &mounts),
            Some(PathBuf::from("/mnt/my pids/c2"))
        );
    }

    #[test]
    fn maps_the_unified_hierarchy() {
        let mounts = parse_cgroup_mounts(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let entries = parse_proc_cgroup("0::/kubepods/pod1/c1\n");
        assert_eq!(
            cgroup_dir(&entries[0], &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1"))
        );
    }

    #[test]
    fn finds_home() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      broken line\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      empty:x:7:7:::/bin/sh\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 65534).as_deref(), Some("/nonexistent"));
        assert_eq!(home_of(passwd, 7), None);
        assert_eq!(home_of(passwd, 1000), None);
    }

    #[test]
    fn merges_env() {
        let base = vec![
            "PATH=/bin".to_owned(),
            "A=1".to_owned(),
            "B=2".to_owned(),
            "NOVALUE".to_owned(),
        ];
        let overrides = vec![
            ("A".to_owned(), "x".to_owned()),
            ("C".to_owned(), "3".to_owned()),
            ("C".to_owned(), "4".to_owned()),
        ];
        assert_eq!(
            merge_env(&base, &overrides),
            vec!["PATH=/bin", "B=2", "NOVALUE", "A=x", "C=4"]
        );
        assert_eq!(env_value(&base, "PATH"), Some("/bin"));
        assert_eq!(env_value(&base, "NOVALUE"), None);
        assert_eq!(env_value(&base, "P"), None);
    }

    #[test]
    fn finds_executables() {
        let exists = |p: &Path| p == Path::new("/usr/bin/ls") || p == Path::new("./tool");
        assert_eq!(
            find_executable("ls", "/bin:/usr/bin", exists),
            Some(PathBuf::from("/usr/bin/ls"))
        );
        assert_eq!(find_executable("ls", "/bin", exists), None);
        assert_eq!(
            find_executable("tool", "/bin::/sbin", exists),
            Some(PathBuf::from("./tool"))
        );
        assert_eq!(
            find_executable("/no/such", "/bin", exists),
            Some(PathBuf::from("/no/such"))
        );
        assert_eq!(find_executable("", "/bin", exists), None);
    }
}
