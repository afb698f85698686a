//! The host as the spec builder sees it: existence checks, small file reads and device nodes, behind a trait
//! so the builder stays pure and unit tests use a fake.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A character or block device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What the builder needs to know about a host device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The host path (symlinks resolved for [`HostFs::device`]; as found for [`HostFs::list_devices`]).
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Read-only questions the spec builder asks about the host.
pub trait HostFs {
    /// Whether `path` exists, following symlinks (a bind mount follows them too).
    fn exists(&self, path: &Path) -> bool;
    /// A small text file: seccomp profiles, `/proc/sys/kernel/cap_last_cap`, `/proc/sys/kernel/hostname`.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// The device node at `path` (following symlinks), or `None` when it is missing or not a device.
    fn device(&self, path: &Path) -> Option<DeviceInfo>;
    /// Every device node under the host's `/dev`, for privileged containers.
    fn list_devices(&self) -> Vec<DeviceInfo>;
}

/// The real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHostFs;

/// Directories under `/dev` that a privileged container must not get copies of: they are per-container
/// mounts (`pts`, `shm`, `mqueue`), per-process (`fd`) or another manager's state.
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

fn info(path: PathBuf, meta: &fs::Metadata) -> Option<DeviceInfo> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        DeviceKind::Char
    } else if ft.is_block_device() {
        DeviceKind::Block
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceInfo {
        path,
        kind,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

fn walk_dev(dir: &Path, top: bool, out: &mut Vec<DeviceInfo>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // symlink_metadata: symlinks under /dev (e.g. /dev/disk/by-id) are not devices of their own.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if meta.is_dir() {
            if !(top && SKIPPED_DEV_DIRS.contains(&name.as_ref())) {
                walk_dev(&path, false, out);
            }
        } else if !(top && name == "console")
            && let Some(d) = info(path, &meta)
        {
            // /dev/console is the container's own terminal, never the host's.
            out.push(d);
        }
    }
}

impl HostFs for RealHostFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn device(&self, path: &Path) -> Option<DeviceInfo> {
        let resolved = fs::canonicalize(path).ok()?;
        let meta = fs::metadata(&resolved).ok()?;
        info(resolved, &meta)
    }

    fn list_devices(&self) -> Vec<DeviceInfo> {
        let mut out = Vec::new();
        walk_dev(Path::new("/dev"), true, &mut out);
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_host_sees_dev_null() {
        let d = RealHostFs
            .device(Path::new("/dev/null"))
            .expect("/dev/null is a device");
        assert_eq!((d.kind, d.major, d.minor), (DeviceKind::Char, 1, 3));
        assert!(RealHostFs.device(Path::new("/etc/hostname")).is_none());
        assert!(
            RealHostFs
                .list_devices()
                .iter()
                .any(|d| d.path == Path::new("/dev/null"))
        );
        assert!(
            !RealHostFs
                .list_devices()
                .iter()
                .any(|d| d.path.starts_with("/dev/pts"))
        );
    }
}
