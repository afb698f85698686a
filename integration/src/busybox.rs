//! The busybox test image, made from the host's Debian `busybox` package (dynamic build).
//!
//! Layout: `/bin/busybox`, the shared libraries `ldd` lists at the paths the loader expects,
//! one hard link `/bin/<applet>` per applet (not symlinks: masking `/bin/ls` must not hide
//! `/bin/busybox`), `/etc/passwd` + `/etc/group`, `/tmp` 1777, `Cmd ["sh"]`.
//! Built once per process.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};

use crate::oci::{Compression, Entry, Image, ImageConfig, Layer, ManifestFormat};

/// The host binary the image is made from (`apt-get install busybox`).
pub const BUSYBOX_BIN: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n";

/// The applets of the host busybox (`busybox --list`), without `busybox` itself.
pub fn applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX_BIN)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX_BIN} --list (apt-get install busybox)"))?;
    ensure!(out.status.success(), "{BUSYBOX_BIN} --list failed");
    let list: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    ensure!(list.iter().any(|a| a == "sh"), "busybox has no sh applet");
    Ok(list)
}

/// Absolute paths of the shared objects `ldd BINARY` lists (loader included).
pub fn shared_libraries(binary: &str) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {binary} failed");
    let text = String::from_utf8(out.stdout)?;
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{binary} needs a library this host lacks: {}", line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(path.to_owned());
        }
    }
    ensure!(
        libs.iter().any(|l| l.contains("ld-linux")),
        "ldd {binary} lists no dynamic loader: is it static?"
    );
    Ok(libs)
}

/// The entries of the busybox layer.
pub fn entries() -> Result<Vec<Entry>> {
    let binary = std::fs::read(BUSYBOX_BIN)
        .with_context(|| format!("reading {BUSYBOX_BIN} (apt-get install busybox)"))?;
    let mut dirs = BTreeSet::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "var", "var/run", "proc", "sys", "dev",
    ] {
        dirs.insert(d.to_owned());
    }
    let mut libs = Vec::new();
    for lib in shared_libraries(BUSYBOX_BIN)? {
        // Read through symlinks: the image gets the real file at the path the loader asks for.
        let content = std::fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        let rel = lib.trim_start_matches('/').to_owned();
        let mut parent = std::path::Path::new(&rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        libs.push(Entry::executable(&rel, content));
    }
    let mut out: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d)).collect();
    out.push(Entry::dir("tmp").mode(0o1777));
    out.push(Entry::dir("root").mode(0o700));
    out.extend(libs);
    out.push(Entry::executable("bin/busybox", binary));
    for applet in applets()? {
        out.push(Entry::hardlink(&format!("bin/{applet}"), "bin/busybox"));
    }
    out.push(Entry::file("etc/passwd", PASSWD));
    out.push(Entry::file("etc/group", GROUP));
    Ok(out)
}

/// The uncompressed busybox layer tar, built once per process.
pub fn tar() -> Result<&'static [u8]> {
    static TAR: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    TAR.get_or_init(|| {
        entries()
            .and_then(|e| crate::oci::build_tar(&e))
            .map_err(|e| format!("{e:#}"))
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("building the busybox layer: {e}"))
}

/// The busybox layer with the given compression (each compression built once per process).
pub fn layer(compression: Compression) -> Result<Layer> {
    static LAYERS: [OnceLock<Result<Layer, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match compression {
        Compression::None => &LAYERS[0],
        Compression::Gzip => &LAYERS[1],
        Compression::Zstd => &LAYERS[2],
    };
    slot.get_or_init(|| {
        tar()
            .and_then(|t| Layer::from_tar(t.to_vec(), compression))
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// The busybox image config: PATH, `Cmd ["sh"]`, working dir `/`, linux/amd64.
pub fn config() -> ImageConfig {
    ImageConfig {
        cmd: vec!["sh".into()],
        working_dir: "/".into(),
        ..ImageConfig::default()
    }
}

/// The busybox image (one layer) in the given manifest format and compression.
pub fn image(format: ManifestFormat, compression: Compression) -> Result<Image> {
    Image::new(vec![layer(compression)?], &config(), format)
}

/// Busybox plus more layers on top, with `config` (start from [`config()`] to keep `Cmd`).
pub fn image_with(
    extra_layers: Vec<Layer>,
    config: &ImageConfig,
    format: ManifestFormat,
    compression: Compression,
) -> Result<Image> {
    let mut layers = vec![layer(compression)?];
    layers.extend(extra_layers);
    Image::new(layers, config, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_layer_has_hard_linked_applets_and_libraries() {
        let tar_bytes = tar().unwrap();
        let mut archive = tar::Archive::new(tar_bytes);
        let mut sh = None;
        let mut loader = false;
        let mut tmp_mode = 0;
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            match path.as_str() {
                "bin/sh" => {
                    sh = Some((
                        e.header().entry_type(),
                        e.link_name().unwrap().map(|l| l.into_owned()),
                    ))
                }
                "lib64/ld-linux-x86-64.so.2" => {
                    loader = e.header().entry_type() == tar::EntryType::Regular && e.size() > 0
                }
                "tmp" => tmp_mode = e.header().mode().unwrap(),
                _ => {}
            }
        }
        let (kind, target) = sh.expect("bin/sh in the layer");
        assert_eq!(kind, tar::EntryType::Link);
        assert_eq!(target.unwrap().to_string_lossy(), "bin/busybox");
        assert!(
            loader,
            "the dynamic loader is a regular file at its ELF path"
        );
        assert_eq!(tmp_mode & 0o7777, 0o1777);
    }
}
