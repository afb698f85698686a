//! OOM kills of a container, from its memory cgroup's `oom_kill` counter.
//!
//! cgroup v1: `/sys/fs/cgroup/memory/<cgroupsPath>/memory.oom_control` (`oom_kill N`);
//! cgroup v2: `/sys/fs/cgroup/<cgroupsPath>/memory.events` (`oom_kill N`). The cgroup path is the
//! bundle's `linux.cgroupsPath` as libcontainer's cgroupfs driver uses it (its default when
//! absent is `:youki:<id>`, a literal directory name).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy or hybrid hierarchy: controllers mounted under `<root>/<controller>`.
    V1,
    /// Unified hierarchy at `<root>`.
    V2,
}

/// The cgroup layout of the host, from the file system type at `root` (`/sys/fs/cgroup`).
pub fn detect_version(root: &Path) -> CgroupVersion {
    match nix::sys::statfs::statfs(root) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
            CgroupVersion::V2
        }
        _ => CgroupVersion::V1,
    }
}

/// The container's cgroup path relative to a hierarchy root, as libcontainer computes it.
pub fn container_cgroup(cgroups_path: Option<&Path>, id: &str) -> PathBuf {
    let path = match cgroups_path {
        Some(p) => p.to_owned(),
        None => PathBuf::from(format!(":youki:{id}")),
    };
    path.strip_prefix("/").map(Path::to_owned).unwrap_or(path)
}

/// The cgroup systemd gives a container whose `cgroupsPath` is `slice:prefix:name`, relative to
/// the v2 root, as libcgroups' systemd manager (running as root) names it: the slice expanded
/// into its ancestors (`a-b.slice` is `a.slice/a-b.slice`; none is `system.slice`), then the
/// unit: `prefix-name.scope`, or `name` itself when that is a slice.
pub fn systemd_cgroup(cgroups_path: &Path) -> Option<PathBuf> {
    let text = cgroups_path.to_str().filter(|p| !p.contains('/'))?;
    let mut parts = text.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice").filter(|s| !s.is_empty())?;
    let mut path = PathBuf::new();
    if stem != "-" {
        let mut ancestor = String::new();
        for component in stem.split('-') {
            if component.is_empty() {
                return None;
            }
            if !ancestor.is_empty() {
                ancestor.push('-');
            }
            ancestor.push_str(component);
            path.push(format!("{ancestor}.slice"));
        }
    }
    if name.ends_with(".slice") {
        path.push(name);
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Some(path)
}

/// The file holding the container's `oom_kill` counter.
pub fn oom_counter_file(root: &Path, version: CgroupVersion, cgroup: &Path) -> PathBuf {
    match version {
        CgroupVersion::V1 => root.join("memory").join(cgroup).join("memory.oom_control"),
        CgroupVersion::V2 => root.join(cgroup).join("memory.events"),
    }
}

/// The `oom_kill N` value of a `memory.oom_control` or `memory.events` file.
pub fn parse_oom_kill(contents: &str) -> Option<u64> {
    contents.lines().find_map(|line| {
        let (key, value) = line.split_once(char::is_whitespace)?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// Reads a container's OOM kill count.
#[derive(Debug, Clone)]
pub struct OomCounter {
    file: PathBuf,
}

impl OomCounter {
    pub fn new(file: PathBuf) -> Self {
        OomCounter { file }
    }

    /// For the host's cgroup layout under `/sys/fs/cgroup`; `systemd`: systemd placed the
    /// container (`run --systemd-cgroup`, cgroup v2 only).
    pub fn for_container(cgroups_path: Option<&Path>, id: &str, systemd: bool) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let version = detect_version(root);
        let cgroup = cgroups_path
            .filter(|_| systemd && version == CgroupVersion::V2)
            .and_then(systemd_cgroup)
            .unwrap_or_else(|| container_cgroup(cgroups_path, id));
        Self::new(oom_counter_file(root, version, &cgroup))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The current count; `None` when the file cannot be read (cgroup gone, no memory
    /// controller) or has no `oom_kill` line.
    pub fn count(&self) -> Option<u64> {
        parse_oom_kill(&std::fs::read_to_string(&self.file).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_as_libcgroups_names_them() {
        let cases = [
            (
                "keelson.slice:keelson:c1",
                Some("keelson.slice/keelson-c1.scope"),
            ),
            (
                "kubepods-burstable-pod1.slice:keelson:c1",
                Some(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/keelson-c1.scope",
                ),
            ),
            (":keelson:c1", Some("system.slice/keelson-c1.scope")),
            ("-.slice:keelson:c1", Some("keelson-c1.scope")),
            ("machine.slice:p:sub.slice", Some("machine.slice/sub.slice")),
            ("/keelson/c1", None),
            ("keelson:c1", None),
            ("notaslice:p:c1", None),
            ("a--b.slice:p:c1", None),
        ];
        for (path, want) in cases {
            assert_eq!(
                systemd_cgroup(Path::new(path)),
                want.map(PathBuf::from),
                "{path}"
            );
        }
    }

    #[test]
    fn paths_per_version() {
        let root = Path::new("/sys/fs/cgroup");
        let cg = container_cgroup(Some(Path::new("/keelson-test/c1")), "c1");
        assert_eq!(cg, PathBuf::from("keelson-test/c1"));
        assert_eq!(
            oom_counter_file(root, CgroupVersion::V1, &cg),
            PathBuf::from("/sys/fs/cgroup/memory/keelson-test/c1/memory.oom_control")
        );
        assert_eq!(
            oom_counter_file(root, CgroupVersion::V2, &cg),
            PathBuf::from("/sys/fs/cgroup/keelson-test/c1/memory.events")
        );
        assert_eq!(
            container_cgroup(Some(Path::new("kubepods/pod1/c1")), "c1"),
            PathBuf::from("kubepods/pod1/c1")
        );
        assert_eq!(container_cgroup(None, "c1"), PathBuf::from(":youki:c1"));
    }

    #[test]
    fn parse_v1_oom_control() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kill(v1), Some(2));
        // older kernels have no oom_kill line
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn parse_v2_memory_events() {
        let v2 = "low 0\nhigh 0\nmax 14\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(1));
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);
        assert_eq!(parse_oom_kill(""), None);
    }

    #[test]
    fn counter_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        let counter = OomCounter::new(file.clone());
        assert_eq!(counter.count(), None);
        std::fs::write(&file, "oom 0\noom_kill 0\n").unwrap();
        assert_eq!(counter.count(), Some(0));
        std::fs::write(&file, "oom 3\noom_kill 3\n").unwrap();
        assert_eq!(counter.count(), Some(3));
    }

    #[test]
    fn host_version_is_detected() {
        // This machine: cgroup v1 hybrid, tmpfs at /sys/fs/cgroup; a v2 host has cgroup2 there.
        let v = detect_version(Path::new("/sys/fs/cgroup"));
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        assert_eq!(v == CgroupVersion::V2, unified);
    }
}
