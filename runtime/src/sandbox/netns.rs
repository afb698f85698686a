//! Pod namespaces (network, IPC, UTS) pinned by a bind mount: no process keeps them alive.
//!
//! A namespace is made on a short-lived thread that `unshare`s its own namespace (and, for UTS,
//! sets the pod's hostname) and bind-mounts `/proc/thread-self/ns/<kind>` onto the pin file; the
//! thread then exits and the namespace lives as long as the mount. Removal is a lazy unmount plus
//! unlink, both idempotent.

use nix::mount::{MntFlags, MsFlags};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong with a namespace pin.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create {kind} namespace at {path}: {step}: {source}")]
    Create {
        kind: &'static str,
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error("cannot remove namespace pin {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// The namespaces a pod shares between its containers and pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    Net,
    Ipc,
    /// With the pod's hostname set inside.
    Uts,
}

impl NsKind {
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }

    fn flag(self) -> nix::sched::CloneFlags {
        match self {
            NsKind::Net => nix::sched::CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => nix::sched::CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => nix::sched::CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// The side effects on namespaces that sandbox logic needs; faked in unit tests.
pub trait NetnsOps: Send + Sync {
    /// Makes a new namespace of `kind` pinned at `path`; `hostname` applies to UTS.
    fn create(&self, kind: NsKind, path: &Path, hostname: Option<&str>) -> Result<(), NetnsError>;
    fn remove(&self, path: &Path) -> Result<(), NetnsError>;
}

/// The real thing: unshare + bind mount.
pub struct KernelNetns;

impl NetnsOps for KernelNetns {
    fn create(&self, kind: NsKind, path: &Path, hostname: Option<&str>) -> Result<(), NetnsError> {
        let err = |step: &'static str| {
            move |source: io::Error| NetnsError::Create {
                kind: kind.name(),
                path: path.to_path_buf(),
                step,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err("creating the pin directory"))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err("creating the pin file"))?;
        let target = path.to_path_buf();
        let hostname = hostname.map(str::to_string);
        // A dedicated thread: unshare of net/ipc/uts changes only the calling thread, which then exits.
        let result = std::thread::spawn(move || -> Result<(), (&'static str, io::Error)> {
            nix::sched::unshare(kind.flag()).map_err(|e| ("unshare", e.into()))?;
            if let (NsKind::Uts, Some(name)) = (kind, &hostname) {
                nix::unistd::sethostname(name).map_err(|e| ("sethostname", e.into()))?;
            }
            let source = format!("/proc/thread-self/ns/{}", kind.name());
            nix::mount::mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind mount", e.into()))
        })
        .join()
        .unwrap_or_else(|_| Err(("namespace thread", io::Error::other("panicked"))));
        if let Err((step, source)) = result {
            let _ = fs::remove_file(path);
            return Err(err(step)(source));
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), NetnsError> {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (half-made pin); ENOENT: already gone.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(NetnsError::Remove {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NetnsError::Remove {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Whether `path` is a live namespace pin (an nsfs mount), not just a leftover file.
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::cni::{Attachment, Cni, NetworkList, ProcessExec, result_ips};
    use std::process::Command;

    fn in_netns(pin: &Path, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", pin.display()))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn create_is_a_real_namespace_and_remove_is_idempotent() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("ns1");
        KernelNetns.create(NsKind::Net, &pin, None).unwrap();
        assert!(is_pinned(&pin));
        // A fresh namespace has only a (down) loopback interface.
        let links = in_netns(&pin, &["ip", "-o", "link"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(
            KernelNetns.create(NsKind::Net, &pin, None).is_err(),
            "a pin is never silently replaced"
        );
        KernelNetns.remove(&pin).unwrap();
        assert!(!pin.exists());
        KernelNetns.remove(&pin).unwrap();

        let uts = dir.path().join("uts1");
        KernelNetns
            .create(NsKind::Uts, &uts, Some("pod-host-1"))
            .unwrap();
        let out = Command::new("nsenter")
            .arg(format!("--uts={}", uts.display()))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pod-host-1");
        let host = nix::unistd::gethostname().unwrap();
        assert_ne!(
            host.to_string_lossy(),
            "pod-host-1",
            "the host keeps its name"
        );
        KernelNetns.remove(&uts).unwrap();
        let ipc = dir.path().join("ipc1");
        KernelNetns.create(NsKind::Ipc, &ipc, None).unwrap();
        assert!(is_pinned(&ipc));
        KernelNetns.remove(&ipc).unwrap();
    }

    /// The real Debian CNI plugins into a pinned namespace: address assigned, then released on DEL.
    #[test]
    fn real_bridge_plugin_round_trip() {
        let bins: Vec<PathBuf> = vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()];
        if !nix::unistd::Uid::effective().is_root()
            || !bins.iter().any(|d| d.join("bridge").is_file())
        {
            eprintln!("skipping: needs root and containernetworking-plugins");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ipam_dir = dir.path().join("ipam");
        // Keep any stray packet for this test range on the host (see FACTS.md network rule).
        let cidr = "10.234.17.0/24";
        let _ = Command::new("ip")
            .args(["route", "add", "unreachable", cidr, "metric", "4000"])
            .status();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"kt-unit","plugins":[{{"type":"bridge","bridge":"kt-unit0","isGateway":true,
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{cidr}"}}]],"dataDir":"{}"}}}}]}}"#,
            ipam_dir.display()
        );
        let net = NetworkList::parse(Path::new("test.conflist"), &conf).unwrap();
        let pin = dir.path().join("ns-cni");
        KernelNetns.create(NsKind::Net, &pin, None).unwrap();
        let cni = Cni {
            bin_dirs: bins,
            exec: ProcessExec,
        };
        let att = Attachment {
            container_id: "unit-sb".into(),
            netns: pin.clone(),
            ifname: "eth0".into(),
            args: vec![],
            port_mappings: vec![],
        };
        cni.add(
            &NetworkList::loopback(),
            &Attachment {
                ifname: "lo".into(),
                ..att.clone()
            },
        )
        .unwrap();
        let result = cni.add(&net, &att).unwrap();
        let ips = result_ips(&result);
        assert_eq!(ips.len(), 1);
        assert!(ips[0].starts_with("10.234.17."), "{ips:?}");
        assert!(in_netns(&pin, &["ip", "-o", "addr", "show", "eth0"]).contains(&ips[0]));
        cni.check(&net, &att, &result).unwrap();
        let reserved = ipam_dir.join("kt-unit").join(&ips[0]);
        assert!(reserved.exists(), "host-local reserves the IP in a file");
        cni.del(&net, &att, Some(&result)).unwrap();
        assert!(!reserved.exists(), "DEL releases the IP");
        cni.del(&net, &att, Some(&result)).unwrap(); // idempotent
        KernelNetns.remove(&pin).unwrap();
        let _ = Command::new("ip")
            .args(["link", "del", "kt-unit0"])
            .status();
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", cidr, "metric", "4000"])
            .status();
    }
}
