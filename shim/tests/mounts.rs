//! End-to-end tests of bind mounts with mount propagation (critest "Container Mount
//! Propagation"), root only.
//!
//! libcontainer 0.7 accepts only the OCI values `shared`, `slave`, `private` and `unbindable`
//! for `linux.rootfsPropagation` (runc also takes `rshared`, `rslave`, ...), and it makes the
//! whole mount tree of the container recursively shared or slave with them. It ignores the
//! propagation options of individual mounts (`rshared`, `rslave`, `rprivate`): a bind mount keeps
//! the relation its source has after the root's change (a peer of a shared host mount with
//! `shared`, its slave with `slave`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::TestContainer;
use keelson_shim::protocol::ExecResult;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, Mount};

/// Lazily unmounts its paths, last first, when dropped.
#[derive(Default)]
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = umount2(path, MntFlags::MNT_DETACH);
        }
    }
}

fn bind(source: &Path, target: &Path) {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
}

fn propagate(target: &Path, flag: MsFlags) {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("propagation of {}: {e}", target.display()));
}

/// critest's privileged container: CAP_SYS_ADMIN, no seccomp profile.
fn privileged(spec: &mut oci_spec::runtime::Spec) {
    let mut process = spec.process().clone().unwrap();
    let set: Capabilities = [Capability::SysAdmin, Capability::DacOverride]
        .into_iter()
        .collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
}

/// The spec the runtime writes for one CRI mount of `dir` at the same path.
fn with_volume(spec: &mut oci_spec::runtime::Spec, dir: &Path, option: &str, root: Option<&str>) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut m = Mount::default();
    m.set_destination(dir.to_owned())
        .set_typ(Some("bind".into()))
        .set_source(Some(dir.to_owned()))
        .set_options(Some(vec!["rbind".into(), option.into(), "rw".into()]));
    mounts.push(m);
    spec.set_mounts(Some(mounts));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_rootfs_propagation(root.map(String::from));
    spec.set_linux(Some(linux));
    privileged(spec);
}

/// Mounts an overlay of `lower` at `target` (upper and work dirs beside it), like the runtime's
/// rootfs. Outside the container's own temporary directory, so that it is unmounted before any
/// directory is removed.
fn mount_overlay(lower: &Path, target: &Path, unmount: &mut Unmount) {
    let base = target.parent().unwrap();
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [target, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
    unmount.0.push(target.to_owned());
}

fn exec_ok(c: &TestContainer, cmd: &[&str]) -> ExecResult {
    let out = c.exec(&[], cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: ExecResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.exit_code, 0, "{cmd:?}: {:?}", r.stderr());
    r
}

/// critest's flow. Returns whether a host mount made after the start was seen in the container,
/// and whether a mount the container made was seen on the host.
fn propagation(
    name: &str,
    host: MsFlags,
    option: &str,
    root: Option<&str>,
    overlay: bool,
) -> (bool, bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut unmount = Unmount::default();
    let source = dir.path().join("mnt");
    let host_mount_point = source.join("propagationMnt");
    let flag_dir = dir.path().join("propagationSrcDir");
    fs::create_dir_all(&host_mount_point).unwrap();
    fs::create_dir_all(&flag_dir).unwrap();
    fs::write(flag_dir.join("flagFile"), "").unwrap();
    bind(&source, &source);
    unmount.0.push(source.clone());
    propagate(&source, host);

    let overlay_rootfs = dir.path().join("rootfs");
    let mut c = TestContainer::with_spec(name, &["sleep", "1000"], |spec| {
        with_volume(spec, &source, option, root);
        if overlay {
            let mut root = spec.root().clone().unwrap();
            root.set_path(overlay_rootfs.clone());
            spec.set_root(Some(root));
        }
    });
    if overlay {
        mount_overlay(&c.rootfs(), &overlay_rootfs, &mut unmount);
    }
    c.start_shim();
    c.client().start().unwrap();

    bind(&flag_dir, &host_mount_point);
    unmount.0.push(host_mount_point.clone());
    let r = exec_ok(&c, &["ls", "-A", host_mount_point.to_str().unwrap()]);
    let host_to_container = !r.stdout().unwrap().is_empty();

    let container_mount_point = source.join("containerMntPoint");
    let target = container_mount_point.display();
    exec_ok(
        &c,
        &[
            "sh",
            "-c",
            &format!("mkdir -p {target} && mount --bind /etc {target}"),
        ],
    );
    unmount.0.push(container_mount_point.clone());
    let container_to_host = fs::read_dir(&container_mount_point).unwrap().count() > 0;
    drop(c);
    (host_to_container, container_to_host)
}

#[test]
fn rshared_volume_propagates_both_ways() {
    require_root!();
    for overlay in [false, true] {
        assert_eq!(
            propagation(
                "prop-shared",
                MsFlags::MS_SHARED,
                "rshared",
                Some("shared"),
                overlay
            ),
            (true, true),
            "overlay rootfs: {overlay}"
        );
    }
}

#[test]
fn rslave_volume_propagates_from_the_host_only() {
    require_root!();
    for overlay in [false, true] {
        assert_eq!(
            propagation(
                "prop-slave",
                MsFlags::MS_SHARED,
                "rslave",
                Some("slave"),
                overlay
            ),
            (true, false),
            "overlay rootfs: {overlay}"
        );
    }
}

#[test]
fn rprivate_volume_of_a_private_host_dir_does_not_propagate() {
    require_root!();
    assert_eq!(
        propagation("prop-private", MsFlags::MS_PRIVATE, "rprivate", None, true),
        (false, false)
    );
}

#[test]
fn libcontainer_refuses_recursive_rootfs_propagation_names() {
    require_root!();
    // What the runtime wrote: libcontainer fails in "prepare rootfs" (UnknownRootfsPropagation).
    for root in ["rshared", "rslave"] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = TestContainer::with_spec("prop-refused", &["sleep", "1000"], |spec| {
            with_volume(spec, dir.path(), root, Some(root))
        });
        let line = c.spawn_shim(&[]);
        assert!(
            line.starts_with("error: ") && line.contains("failed to prepare rootfs"),
            "{root}: {line}"
        );
        assert!(
            c.shim_log().contains("UnknownRootfsPropagation"),
            "{}",
            c.shim_log()
        );
    }
}
