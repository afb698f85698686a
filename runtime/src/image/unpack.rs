//! Safe unpacking of untrusted OCI/Docker image layers into overlayfs-ready snapshot directories.
//!
//! This is the security boundary between image content and the node's filesystem. Every layer
//! goes into its own empty directory in overlayfs's on-disk format: whiteouts (`.wh.<name>`)
//! become 0/0 character devices, opaque markers (`.wh..wh..opq`) become the
//! `trusted.overlay.opaque=y` xattr, and other AUFS metadata (`.wh..wh.*`) is dropped.
//!
//! Safety rules, each enforced per entry with an error naming the entry:
//! - entry paths are normalised (`./` and leading `/` stripped); `..`, NUL and empty names are refused;
//! - every parent inside the layer must be a real directory (checked with `lstat`, cached), so nothing
//!   is ever written through a symlink; final components are created with `O_EXCL`-style calls that
//!   never follow a symlink, after unlinking whatever a previous entry left there;
//! - hard link targets obey the same rules and must not traverse a symlink; targets missing from the
//!   layer are reported as [`UnpackOutcome::lower_hardlinks`] for [`resolve_lower_hardlinks`];
//! - the memory spent on one entry's metadata (GNU long names, PAX records, sparse maps) is capped;
//!   file contents are streamed.

use crate::image::digest::{Digest, HashingReader};
use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;
use tracing::{debug, warn};
use xattr::FileExt as _;

/// Copy buffer for file contents.
const COPY_BUF: usize = 256 * 1024;
/// Read-ahead buffer between the decompressor and the tar parser.
const READ_AHEAD: usize = 128 * 1024;
/// Most bytes the tar parser may consume (and buffer) for the metadata of one entry.
pub const METADATA_LIMIT: u64 = 8 << 20;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the OCI/Docker layer media type (`...tar`, `...tar+gzip`, `...tar+zstd`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`, foreign/nondistributable variants too).
    /// Media type parameters are ignored; anything else is [`UnpackError::UnsupportedMediaType`].
    pub fn from_media_type(mt: &str) -> Result<Compression, UnpackError> {
        let essence = mt
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            _ => Err(UnpackError::UnsupportedMediaType(mt.to_string())),
        }
    }

    /// Sniffs the magic bytes (gzip `1f 8b`, zstd `28 b5 2f fd`) for sources with no media type
    /// (docker save tarballs). Anything else is taken to be a plain tar.
    pub fn sniff(first_bytes: &[u8]) -> Compression {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What unpacking one layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOutcome {
    /// sha256 of the whole decompressed stream, read to EOF (padding after the tar end marker included).
    pub diff_id: Digest,
    /// Sum of the regular file sizes written.
    pub size: u64,
    /// Inodes created: directories (implicit parents too), files, symlinks, devices, fifos and
    /// whiteouts. Hard links within the layer add no inode and are not counted.
    pub inodes: u64,
    /// `(link path, target path)`, both relative to the layer root, for hard links whose target is not
    /// in this layer; complete them with [`resolve_lower_hardlinks`].
    pub lower_hardlinks: Vec<(PathBuf, PathBuf)>,
}

/// Why an entry of a layer was refused: the layer tries something a well-formed image never needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("empty entry name")]
    EmptyName,
    #[error("name contains a NUL byte")]
    NulByte,
    #[error("path escapes the layer root")]
    EscapesRoot,
    #[error("parent {0:?} is a symbolic link, which is never followed inside a layer")]
    SymlinkParent(PathBuf),
    #[error("parent {0:?} is not a directory")]
    NotDirectoryParent(PathBuf),
    #[error("the layer root can only be a directory")]
    RootNotDirectory,
    #[error("whiteout names no entry")]
    InvalidWhiteout,
    #[error("link has an empty target")]
    EmptyLinkTarget,
    #[error("hard link points to itself")]
    HardlinkToItself,
    #[error("hard link target is a directory")]
    HardlinkToDirectory,
    #[error("hard link target was deleted by a whiteout in this layer")]
    HardlinkTargetWhitedOut,
    #[error("hard link target {target:?}: {why}")]
    HardlinkTarget { target: String, why: Box<Refusal> },
    #[error("owner id {0} is out of range")]
    IdOutOfRange(u64),
    #[error("unsupported entry type {:?}", char::from(*.0))]
    UnsupportedType(u8),
}

/// Why a layer could not be unpacked or its lower hard links completed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("unpack destination {path:?} {why}")]
    Destination { path: Box<Path>, why: &'static str },
    #[error("refusing layer entry {entry:?}: {why}")]
    Refused { entry: Box<str>, why: Refusal },
    #[error("layer entry {entry:?} has a malformed header: {source}")]
    Header { entry: Box<str>, source: io::Error },
    #[error("layer entry {entry:?}: {op} {path:?}: {source}")]
    Io {
        entry: Box<str>,
        op: &'static str,
        path: Box<Path>,
        source: io::Error,
    },
    #[error("reading contents of layer entry {entry:?}: {source}")]
    EntryData { entry: Box<str>, source: io::Error },
    #[error("reading layer stream: {0}")]
    Stream(#[source] io::Error),
    #[error(
        "layer metadata for one entry exceeds {limit} bytes (long names, pax records or sparse maps)"
    )]
    MetadataTooLarge { limit: u64 },
    #[error("hard link {link:?}: target {target:?} is not in this layer or any lower layer")]
    LowerTargetMissing { link: Box<Path>, target: Box<Path> },
    #[error("hard link {link:?} -> {target:?}: {why}")]
    LowerLink {
        link: Box<Path>,
        target: Box<Path>,
        why: &'static str,
    },
    #[error("hard link {link:?}: {op} {path:?}: {source}")]
    LowerIo {
        link: Box<Path>,
        op: &'static str,
        path: Box<Path>,
        source: io::Error,
    },
}

fn refused(entry: &str, why: Refusal) -> UnpackError {
    UnpackError::Refused {
        entry: entry.into(),
        why,
    }
}

fn io_err(entry: &str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Io {
        entry: entry.into(),
        op,
        path: path.into(),
        source,
    }
}

/// Blocking. Decompresses `reader` per `compression`, unpacks into `dest` (must exist and be empty),
/// returns the outcome. On error `dest` holds a partial layer: the caller discards it.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    dest: &Path,
) -> Result<UnpackOutcome, UnpackError> {
    check_dest(dest)?;
    match compression {
        Compression::None => unpack_decompressed(reader, dest),
        Compression::Gzip => unpack_decompressed(flate2::read::MultiGzDecoder::new(reader), dest),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(reader).map_err(UnpackError::Stream)?;
            unpack_decompressed(decoder, dest)
        }
    }
}

fn check_dest(dest: &Path) -> Result<(), UnpackError> {
    let bad = |why| UnpackError::Destination {
        path: dest.into(),
        why,
    };
    let md = fs::symlink_metadata(dest).map_err(|_| bad("does not exist"))?;
    if !md.is_dir() {
        return Err(bad("is not a directory"));
    }
    let mut listing = fs::read_dir(dest).map_err(|_| bad("cannot be listed"))?;
    if listing.next().is_some() {
        return Err(bad("is not empty"));
    }
    Ok(())
}

/// How many bytes the tar parser may still read before it hands over the next entry.
#[derive(Default)]
struct Budget {
    remaining: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

/// Enforces [`Budget`] on reads made by the tar parser itself (headers, long names, PAX records,
/// sparse maps); entry contents are read with no budget set.
struct MetadataGuard<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for MetadataGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(remaining) = self.budget.remaining.get() else {
            return self.inner.read(buf);
        };
        if remaining == 0 {
            self.budget.tripped.set(true);
            return Err(io::Error::other("layer entry metadata too large"));
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.remaining.set(Some(remaining - n as u64));
        Ok(n)
    }
}

fn unpack_decompressed<D: Read>(decoder: D, dest: &Path) -> Result<UnpackOutcome, UnpackError> {
    let mut hashing = HashingReader::new(decoder);
    let budget = Rc::new(Budget::default());
    let mut unpacker = Unpacker::new(dest)?;
    {
        let guard = MetadataGuard {
            inner: BufReader::with_capacity(READ_AHEAD, &mut hashing),
            budget: Rc::clone(&budget),
        };
        let mut archive = tar::Archive::new(guard);
        let mut entries = archive.entries().map_err(UnpackError::Stream)?;
        loop {
            budget.remaining.set(Some(METADATA_LIMIT));
            let next = entries.next();
            budget.remaining.set(None);
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(_)) if budget.tripped.get() => {
                    return Err(UnpackError::MetadataTooLarge {
                        limit: METADATA_LIMIT,
                    });
                }
                Some(Err(e)) => return Err(UnpackError::Stream(e)),
            };
            unpacker.entry(&mut entry)?;
            // Consume what the handler left unread (data of non-file entries) outside the budget.
            io::copy(&mut entry, &mut io::sink()).map_err(|source| UnpackError::EntryData {
                entry: String::from_utf8_lossy(&entry.path_bytes()).into(),
                source,
            })?;
        }
    }
    unpacker.apply_dir_times()?;
    let (diff_id, _) = hashing.finish().map_err(UnpackError::Stream)?;
    Ok(UnpackOutcome {
        diff_id,
        size: unpacker.size,
        inodes: unpacker.inodes,
        lower_hardlinks: unpacker.lower.into_iter().collect(),
    })
}

/// The metadata of one entry that ends up on disk.
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A directory of the layer known to be real (created or `lstat`ed by us).
#[derive(Clone, Copy)]
struct DirState {
    setgid: bool,
    /// Set for directories that came from an entry: applied once all children are written.
    mtime: Option<TimeSpec>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    /// Verified directories by path relative to `dest` (`""` is the root). Only this unpacker changes
    /// `dest`, and every removal forgets the removed subtree, so an entry here is still a directory.
    dirs: BTreeMap<PathBuf, DirState>,
    /// Hard links whose target is not in this layer: link path -> target path.
    lower: BTreeMap<PathBuf, PathBuf>,
    buf: Vec<u8>,
    euid: u32,
    egid: u32,
    size: u64,
    inodes: u64,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path) -> Result<Self, UnpackError> {
        let md = fs::symlink_metadata(dest).map_err(io_err("", "inspecting", dest))?;
        let mut dirs = BTreeMap::new();
        dirs.insert(
            PathBuf::new(),
            DirState {
                setgid: md.mode() & libc::S_ISGID != 0,
                mtime: None,
            },
        );
        Ok(Unpacker {
            dest,
            dirs,
            lower: BTreeMap::new(),
            buf: vec![0; COPY_BUF],
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            size: 0,
            inodes: 0,
        })
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(rel)
        }
    }

    /// A freshly created inode already has our ids unless the parent's setgid bit imposed its group.
    fn needs_chown(&self, meta_uid: u32, meta_gid: u32, parent_setgid: bool) -> bool {
        parent_setgid || meta_uid != self.euid || meta_gid != self.egid
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let header = entry.header();
        let mut kind = header.entry_type();
        match kind {
            EntryType::XGlobalHeader => {
                debug!(entry = %name, "skipping global pax header");
                return Ok(());
            }
            // Pre-POSIX archives mark directories with a trailing slash on an old-style regular entry.
            EntryType::Regular if header.as_bytes()[156] == 0 && raw.ends_with(b"/") => {
                kind = EntryType::Directory
            }
            _ => {}
        }
        let rel = normalize(&raw).map_err(|why| refused(&name, why))?;
        let mut dirs = rel.parent().map(Path::components).into_iter().flatten();
        if dirs.any(|c| c.as_os_str().as_bytes().starts_with(AUFS_META_PREFIX)) {
            // Inside AUFS metadata directories (`.wh..wh.plnk`, `.wh..wh.orph`): not layer content.
            debug!(entry = %name, "skipping aufs metadata");
            return Ok(());
        }
        if rel
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX))
        {
            let (uid, gid) = ids(entry.header(), &name)?;
            return self.whiteout(&rel, &name, uid, gid);
        }
        if rel.as_os_str().is_empty() && kind != EntryType::Directory {
            return Err(refused(&name, Refusal::RootNotDirectory));
        }
        let meta = read_meta(entry, &name)?;
        match kind {
            EntryType::Directory => self.directory(&rel, &name, &meta),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(&rel, &name, &meta, entry)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.symlink(&rel, &name, &meta, &target)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hardlink(&rel, &name, &target)
            }
            EntryType::Fifo => self.device(&rel, &name, &meta, SFlag::S_IFIFO, 0),
            EntryType::Char | EntryType::Block => {
                let header = entry.header();
                let bad = |source| UnpackError::Header {
                    entry: name.as_str().into(),
                    source,
                };
                let major = header.device_major().map_err(bad)?.unwrap_or(0);
                let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
                let dev = nix::sys::stat::makedev(major.into(), minor.into());
                let sflag = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                self.device(&rel, &name, &meta, sflag, dev)
            }
            other => Err(refused(&name, Refusal::UnsupportedType(other.as_byte()))),
        }
    }

    /// Makes sure every parent of `rel` is a real directory, creating missing ones (0755, root) as tar
    /// does; refuses symlinks and non-directories. Returns whether the immediate parent is setgid.
    fn ensure_parent(&mut self, rel: &Path, name: &str) -> Result<bool, UnpackError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some(state) = self.dirs.get(parent) {
            return Ok(state.setgid);
        }
        let mut setgid = self.dirs.get(Path::new("")).is_some_and(|s| s.setgid);
        let mut cur = PathBuf::new();
        for comp in parent.components() {
            cur.push(comp);
            if let Some(state) = self.dirs.get(&cur) {
                setgid = state.setgid;
                continue;
            }
            let abs = self.abs(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(md) if md.is_dir() => {
                    setgid = md.mode() & libc::S_ISGID != 0;
                    self.dirs.insert(
                        cur.clone(),
                        DirState {
                            setgid,
                            mtime: None,
                        },
                    );
                }
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(refused(name, Refusal::SymlinkParent(cur)));
                }
                Ok(_) => return Err(refused(name, Refusal::NotDirectoryParent(cur))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if self.lower.contains_key(&cur) {
                        // A hard link of this layer lives there: a file, not a directory.
                        return Err(refused(name, Refusal::NotDirectoryParent(cur)));
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&abs)
                        .map_err(io_err(name, "creating directory", &abs))?;
                    if self.needs_chown(0, 0, setgid) {
                        std::os::unix::fs::lchown(&abs, Some(0), Some(0))
                            .map_err(io_err(name, "chowning", &abs))?;
                    }
                    // The umask or an inherited setgid bit may have altered the mode.
                    fs::set_permissions(&abs, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(name, "chmoding", &abs))?;
                    self.inodes += 1;
                    setgid = false;
                    self.dirs.insert(
                        cur.clone(),
                        DirState {
                            setgid,
                            mtime: None,
                        },
                    );
                }
                Err(e) => return Err(io_err(name, "inspecting", &abs)(e)),
            }
        }
        Ok(setgid)
    }

    /// Removes whatever an earlier entry left at `rel` (later entries win), forgetting the subtree.
    fn remove_existing(&mut self, rel: &Path, abs: &Path, name: &str) -> Result<(), UnpackError> {
        let md = match fs::symlink_metadata(abs) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(name, "inspecting", abs)(e)),
        };
        if md.is_dir() {
            // std's remove_dir_all never follows symlinks.
            fs::remove_dir_all(abs).map_err(io_err(name, "replacing directory", abs))?;
            forget_subtree(&mut self.dirs, rel);
            forget_subtree(&mut self.lower, rel);
        } else {
            fs::remove_file(abs).map_err(io_err(name, "replacing", abs))?;
        }
        Ok(())
    }

    /// Runs `create` on `abs`; if something is already there, removes it and tries once more.
    fn create_replacing<T>(
        &mut self,
        rel: &Path,
        abs: &Path,
        name: &str,
        op: &'static str,
        mut create: impl FnMut(&Path) -> io::Result<T>,
    ) -> Result<T, UnpackError> {
        // A pending lower hard link at this path is superseded by this later entry.
        if !self.lower.is_empty() {
            self.lower.remove(rel);
        }
        match create(abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, abs, name)?;
                create(abs).map_err(io_err(name, op, abs))
            }
            other => other.map_err(io_err(name, op, abs)),
        }
    }

    fn directory(&mut self, rel: &Path, name: &str, meta: &Meta) -> Result<(), UnpackError> {
        let abs = self.abs(rel);
        let mut fresh = false;
        let mut parent_setgid = false;
        if !rel.as_os_str().is_empty() {
            parent_setgid = self.ensure_parent(rel, name)?;
            self.lower.remove(rel);
            let mkdir = |p: &Path| fs::DirBuilder::new().mode(0o700).create(p);
            fresh = match mkdir(&abs) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let md =
                        fs::symlink_metadata(&abs).map_err(io_err(name, "inspecting", &abs))?;
                    if md.is_dir() {
                        false
                    } else {
                        self.remove_existing(rel, &abs, name)?;
                        mkdir(&abs).map_err(io_err(name, "creating directory", &abs))?;
                        true
                    }
                }
                Err(e) => return Err(io_err(name, "creating directory", &abs)(e)),
            };
        }
        if !fresh || self.needs_chown(meta.uid, meta.gid, parent_setgid) {
            std::os::unix::fs::lchown(&abs, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(name, "chowning", &abs))?;
        }
        // `abs` is a directory we just created or lstat'ed, so following is harmless.
        fs::set_permissions(&abs, fs::Permissions::from_mode(meta.mode))
            .map_err(io_err(name, "chmoding", &abs))?;
        set_xattrs(name, &abs, None, false, &meta.xattrs)?;
        if fresh {
            self.inodes += 1;
        }
        let setgid = meta.mode & libc::S_ISGID != 0;
        self.dirs.insert(
            rel.to_path_buf(),
            DirState {
                setgid,
                mtime: Some(meta.mtime),
            },
        );
        Ok(())
    }

    fn regular(
        &mut self,
        rel: &Path,
        name: &str,
        meta: &Meta,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        let parent_setgid = self.ensure_parent(rel, name)?;
        let abs = self.abs(rel);
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
        };
        let mut file = self.create_replacing(rel, &abs, name, "creating file", open)?;
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::EntryData {
                        entry: name.into(),
                        source,
                    });
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(io_err(name, "writing", &abs))?;
            written += n as u64;
        }
        if self.needs_chown(meta.uid, meta.gid, parent_setgid) {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(name, "chowning", &abs))?;
        }
        // After the chown, which clears setuid/setgid.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(io_err(name, "chmoding", &abs))?;
        set_xattrs(name, &abs, Some(&file), false, &meta.xattrs)?;
        nix::sys::stat::futimens(&file, &meta.mtime, &meta.mtime)
            .map_err(|e| io_err(name, "setting times of", &abs)(e.into()))?;
        self.size += written;
        self.inodes += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        rel: &Path,
        name: &str,
        meta: &Meta,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        if target.is_empty() {
            return Err(refused(name, Refusal::EmptyLinkTarget));
        }
        if target.contains(&0) {
            return Err(refused(name, Refusal::NulByte));
        }
        let parent_setgid = self.ensure_parent(rel, name)?;
        let abs = self.abs(rel);
        // The target text is stored verbatim: it is resolved inside the container's root, not here.
        let target = OsStr::from_bytes(target);
        self.create_replacing(rel, &abs, name, "creating symlink", |p| {
            std::os::unix::fs::symlink(target, p)
        })?;
        if self.needs_chown(meta.uid, meta.gid, parent_setgid) {
            std::os::unix::fs::lchown(&abs, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(name, "chowning", &abs))?;
        }
        set_xattrs(name, &abs, None, true, &meta.xattrs)?;
        set_times_nofollow(&abs, meta.mtime, meta.mtime).map_err(io_err(
            name,
            "setting times of",
            &abs,
        ))?;
        self.inodes += 1;
        Ok(())
    }

    fn hardlink(&mut self, rel: &Path, name: &str, target_raw: &[u8]) -> Result<(), UnpackError> {
        let target_refused = |why| {
            refused(
                name,
                Refusal::HardlinkTarget {
                    target: String::from_utf8_lossy(target_raw).into_owned(),
                    why: Box::new(why),
                },
            )
        };
        let target = normalize(target_raw).map_err(target_refused)?;
        if target.as_os_str().is_empty() {
            return Err(target_refused(Refusal::HardlinkToDirectory));
        }
        if target == rel {
            return Err(refused(name, Refusal::HardlinkToItself));
        }
        self.ensure_parent(rel, name)?;
        let abs = self.abs(rel);
        match self.probe(&target, name, &target_refused)? {
            Some(md) => {
                if md.is_dir() {
                    return Err(target_refused(Refusal::HardlinkToDirectory));
                }
                if is_whiteout(&md) {
                    return Err(target_refused(Refusal::HardlinkTargetWhitedOut));
                }
                let target_abs = self.abs(&target);
                // link(2) never follows a symlink target: the link names the symlink itself.
                self.create_replacing(rel, &abs, name, "creating hard link", |p| {
                    fs::hard_link(&target_abs, p)
                })?;
            }
            None => {
                // A target that is itself a pending lower link resolves to that link's target.
                let lower_target = self.lower.get(&target).cloned().unwrap_or(target);
                self.lower.remove(rel);
                self.remove_existing(rel, &abs, name)?;
                self.lower.insert(rel.to_path_buf(), lower_target);
            }
        }
        Ok(())
    }

    /// `lstat`s a hard link target inside the layer without creating anything; a missing parent means
    /// a missing target, a symlink or non-directory parent is refused.
    fn probe(
        &mut self,
        target: &Path,
        name: &str,
        target_refused: &dyn Fn(Refusal) -> UnpackError,
    ) -> Result<Option<fs::Metadata>, UnpackError> {
        let parent = target.parent().unwrap_or(Path::new(""));
        if !self.dirs.contains_key(parent) {
            let mut cur = PathBuf::new();
            for comp in parent.components() {
                cur.push(comp);
                if self.dirs.contains_key(&cur) {
                    continue;
                }
                let abs = self.abs(&cur);
                match fs::symlink_metadata(&abs) {
                    Ok(md) if md.is_dir() => {
                        let setgid = md.mode() & libc::S_ISGID != 0;
                        self.dirs.insert(
                            cur.clone(),
                            DirState {
                                setgid,
                                mtime: None,
                            },
                        );
                    }
                    Ok(md) if md.file_type().is_symlink() => {
                        return Err(target_refused(Refusal::SymlinkParent(cur)));
                    }
                    Ok(_) => return Err(target_refused(Refusal::NotDirectoryParent(cur))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(name, "inspecting", &abs)(e)),
                }
            }
        }
        let abs = self.abs(target);
        match fs::symlink_metadata(&abs) {
            Ok(md) => Ok(Some(md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(name, "inspecting", &abs)(e)),
        }
    }

    fn device(
        &mut self,
        rel: &Path,
        name: &str,
        meta: &Meta,
        kind: SFlag,
        dev: libc::dev_t,
    ) -> Result<(), UnpackError> {
        let parent_setgid = self.ensure_parent(rel, name)?;
        let abs = self.abs(rel);
        self.create_replacing(rel, &abs, name, "creating device node", |p| {
            nix::sys::stat::mknod(p, kind, Mode::from_bits_truncate(0o600), dev)
                .map_err(io::Error::from)
        })?;
        if self.needs_chown(meta.uid, meta.gid, parent_setgid) {
            std::os::unix::fs::lchown(&abs, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(name, "chowning", &abs))?;
        }
        // A node we just created, not a symlink: chmod(2) following it is harmless.
        fs::set_permissions(&abs, fs::Permissions::from_mode(meta.mode))
            .map_err(io_err(name, "chmoding", &abs))?;
        set_xattrs(name, &abs, None, false, &meta.xattrs)?;
        set_times_nofollow(&abs, meta.mtime, meta.mtime).map_err(io_err(
            name,
            "setting times of",
            &abs,
        ))?;
        self.inodes += 1;
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path, name: &str, uid: u32, gid: u32) -> Result<(), UnpackError> {
        let file_name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if file_name == OPAQUE_MARKER {
            self.ensure_parent(rel, name)?;
            let dir = self.abs(parent);
            return xattr::set(&dir, OPAQUE_XATTR, b"y").map_err(io_err(
                name,
                "marking opaque",
                &dir,
            ));
        }
        if file_name.starts_with(AUFS_META_PREFIX) {
            debug!(entry = %name, "skipping aufs metadata");
            return Ok(());
        }
        let hidden = &file_name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(refused(name, Refusal::InvalidWhiteout));
        }
        let parent_setgid = self.ensure_parent(rel, name)?;
        let hidden_rel = parent.join(OsStr::from_bytes(hidden));
        // Whiteouts only hide lower layers: an entry of this same layer at that path stays.
        if self.lower.contains_key(&hidden_rel) {
            debug!(entry = %name, "whiteout of an entry of the same layer ignored");
            return Ok(());
        }
        let abs = self.abs(&hidden_rel);
        match nix::sys::stat::mknod(&abs, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                debug!(entry = %name, "whiteout of an entry of the same layer ignored");
                return Ok(());
            }
            Err(e) => return Err(io_err(name, "creating whiteout", &abs)(e.into())),
        }
        if self.needs_chown(uid, gid, parent_setgid) {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(io_err(name, "chowning", &abs))?;
        }
        self.inodes += 1;
        Ok(())
    }

    /// Directory times go last: writing children would have changed them.
    fn apply_dir_times(&self) -> Result<(), UnpackError> {
        for (rel, state) in &self.dirs {
            if let Some(mtime) = state.mtime {
                let abs = self.abs(rel);
                let entry = rel.to_string_lossy();
                set_times_nofollow(&abs, mtime, mtime).map_err(io_err(
                    &entry,
                    "setting times of",
                    &abs,
                ))?;
            }
        }
        Ok(())
    }
}

/// Removes `rel` and everything under it from a path-keyed map. Descendants of a path sort right after
/// it (paths compare component-wise), so they form one contiguous range.
fn forget_subtree<V>(map: &mut BTreeMap<PathBuf, V>, rel: &Path) {
    let doomed: Vec<PathBuf> = map
        .range::<Path, _>((Bound::Included(rel), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(rel))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// Normalises an entry name to a path relative to the layer root: `.` components, empty components
/// and leading `/` are dropped; `..`, NUL and empty names are refused. `""` is the root itself.
fn normalize(raw: &[u8]) -> Result<PathBuf, Refusal> {
    if raw.is_empty() {
        return Err(Refusal::EmptyName);
    }
    if raw.contains(&0) {
        return Err(Refusal::NulByte);
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Refusal::EscapesRoot),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

fn ids(header: &tar::Header, name: &str) -> Result<(u32, u32), UnpackError> {
    let bad = |source| UnpackError::Header {
        entry: name.into(),
        source,
    };
    let uid = header.uid().map_err(bad)?;
    let gid = header.gid().map_err(bad)?;
    // u32::MAX is "-1", which chown(2) reads as "leave unchanged".
    let narrow = |id: u64| {
        u32::try_from(id)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| refused(name, Refusal::IdOutOfRange(id)))
    };
    Ok((narrow(uid)?, narrow(gid)?))
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, UnpackError> {
    let bad = |source| UnpackError::Header {
        entry: name.into(),
        source,
    };
    let header = entry.header();
    let mode = header.mode().map_err(bad)? & 0o7777;
    let (uid, gid) = ids(header, name)?;
    let secs = header.mtime().map_err(bad)?;
    let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(bad)? {
        for ext in extensions {
            let ext = ext.map_err(bad)?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    mtime = t;
                }
            } else if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                if attr.starts_with(b"trusted.overlay.") || attr.starts_with(b"user.overlay.") {
                    // These would steer overlayfs itself (redirects, opaqueness, metacopy).
                    warn!(entry = %name, xattr = %String::from_utf8_lossy(attr), "skipping overlayfs xattr from image");
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(attr).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// Parses a PAX time (`<seconds>[.<fraction>]`, possibly negative).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut secs: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    if negative {
        secs = -secs;
        if nanos > 0 {
            secs -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

fn set_times_nofollow(abs: &Path, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    nix::sys::stat::utimensat(
        AT_FDCWD,
        abs,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Xattr failures that mean "this filesystem or security module won't take it" rather than a broken
/// unpack: logged and skipped.
fn xattr_error_tolerable(e: &io::Error, key: &OsStr, is_symlink: bool) -> bool {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => true,
        // user.* xattrs are not allowed on symlinks.
        Some(libc::EPERM) if is_symlink => true,
        // LSM-owned attributes (security.selinux, ...) can be refused by the running policy.
        Some(libc::EPERM | libc::EINVAL) => key.as_bytes().starts_with(b"security."),
        _ => false,
    }
}

/// Sets xattrs through `file` when given, else on `abs` without following a symlink.
fn set_xattrs(
    name: &str,
    abs: &Path,
    file: Option<&File>,
    is_symlink: bool,
    xattrs: &[(OsString, Vec<u8>)],
) -> Result<(), UnpackError> {
    for (key, value) in xattrs {
        let result = match file {
            Some(f) => f.set_xattr(key, value),
            None => xattr::set(abs, key, value),
        };
        match result {
            Ok(()) => {}
            Err(e) if xattr_error_tolerable(&e, key, is_symlink) => {
                warn!(entry = %name, xattr = %key.to_string_lossy(), error = %e, "skipping extended attribute the filesystem refused");
            }
            Err(e) => return Err(io_err(name, "setting extended attribute on", abs)(e)),
        }
    }
    Ok(())
}

/// Completes hardlinks whose targets live in lower layers: copies the target (content, mode, owner,
/// xattrs, times) from the topmost lower that has it into `dest` at the link path. `lowers` is ordered
/// topmost first. Lookup follows overlayfs: a whiteout or a non-directory on the way hides the target,
/// an opaque directory hides the layers below it; a symlink on the way is refused, as is a directory
/// target. A target missing everywhere is an error. Times of the directories of `dest` that receive
/// the copies are restored afterwards.
pub fn resolve_lower_hardlinks(
    dest: &Path,
    lowers: &[PathBuf],
    links: &[(PathBuf, PathBuf)],
) -> Result<(), UnpackError> {
    let mut saved_times: BTreeMap<PathBuf, (TimeSpec, TimeSpec)> = BTreeMap::new();
    for (link, target) in links {
        let lower_err = |why| UnpackError::LowerLink {
            link: link.as_path().into(),
            target: target.as_path().into(),
            why,
        };
        if !is_plain_relative(link) || !is_plain_relative(target) {
            return Err(lower_err(
                "paths must be relative to the layer root without `..`",
            ));
        }
        let (src, md) = find_in_layers(dest, lowers, link, target)?;
        let io_lower = |op: &'static str, path: &Path| {
            let path: Box<Path> = path.into();
            move |source| UnpackError::LowerIo {
                link: link.as_path().into(),
                op,
                path,
                source,
            }
        };

        // Prepare the link's parents in `dest`: real directories only, missing ones created.
        let mut cur = dest.to_path_buf();
        let root_md = fs::symlink_metadata(&cur).map_err(io_lower("inspecting", &cur))?;
        saved_times
            .entry(cur.clone())
            .or_insert_with(|| times_of(&root_md));
        for comp in link.parent().unwrap_or(Path::new("")).components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {
                    saved_times
                        .entry(cur.clone())
                        .or_insert_with(|| times_of(&md));
                }
                Ok(_) => {
                    return Err(lower_err(
                        "a parent of the link in this layer is not a directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(io_lower("creating directory", &cur))?;
                }
                Err(e) => return Err(io_lower("inspecting", &cur)(e)),
            }
        }
        let dst = dest.join(link);
        match fs::symlink_metadata(&dst) {
            Ok(existing) if existing.is_dir() => {
                fs::remove_dir_all(&dst).map_err(io_lower("replacing", &dst))?
            }
            Ok(_) => fs::remove_file(&dst).map_err(io_lower("replacing", &dst))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_lower("inspecting", &dst)(e)),
        }
        if src.starts_with(dest) {
            // The target is in this very layer after all: link it.
            fs::hard_link(&src, &dst).map_err(io_lower("linking", &dst))?;
        } else {
            copy_node(&src, &md, &dst, link)?;
        }
    }
    for (dir, (atime, mtime)) in saved_times {
        set_times_nofollow(&dir, atime, mtime).map_err(|source| UnpackError::LowerIo {
            link: Path::new("").into(),
            op: "restoring times of",
            path: dir.as_path().into(),
            source,
        })?;
    }
    Ok(())
}

fn is_plain_relative(p: &Path) -> bool {
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn times_of(md: &fs::Metadata) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(md.atime(), md.atime_nsec()),
        TimeSpec::new(md.mtime(), md.mtime_nsec()),
    )
}

/// Finds `target` the way overlayfs would in the stack `dest` (top), then `lowers`.
fn find_in_layers(
    dest: &Path,
    lowers: &[PathBuf],
    link: &Path,
    target: &Path,
) -> Result<(PathBuf, fs::Metadata), UnpackError> {
    let missing = || UnpackError::LowerTargetMissing {
        link: link.into(),
        target: target.into(),
    };
    let refuse = |why| UnpackError::LowerLink {
        link: link.into(),
        target: target.into(),
        why,
    };
    let inspect_err = |path: &Path, source| UnpackError::LowerIo {
        link: link.into(),
        op: "inspecting",
        path: path.into(),
        source,
    };
    let parent = target.parent().unwrap_or(Path::new(""));
    for root in std::iter::once(dest).chain(lowers.iter().map(PathBuf::as_path)) {
        let mut opaque = false;
        let mut absent = false;
        let mut cur = root.to_path_buf();
        for comp in parent.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => match xattr::get(&cur, OPAQUE_XATTR) {
                    Ok(value) => opaque |= value.as_deref() == Some(b"y"),
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                    Err(e) => return Err(inspect_err(&cur, e)),
                },
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(refuse("a parent of the target is a symbolic link"));
                }
                // A whiteout or a file shadows everything below it.
                Ok(_) => return Err(missing()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    absent = true;
                    break;
                }
                Err(e) => return Err(inspect_err(&cur, e)),
            }
        }
        if !absent {
            cur.push(target.file_name().unwrap_or_default());
            match fs::symlink_metadata(&cur) {
                Ok(md) if is_whiteout(&md) => return Err(missing()),
                Ok(md) if md.is_dir() => return Err(refuse("the target is a directory")),
                Ok(md) => return Ok((cur, md)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(inspect_err(&cur, e)),
            }
        }
        if opaque {
            return Err(missing());
        }
    }
    Err(missing())
}

/// Copies one non-directory inode `src` (metadata `md`) to the new path `dst`.
fn copy_node(src: &Path, md: &fs::Metadata, dst: &Path, link: &Path) -> Result<(), UnpackError> {
    let io_lower = |op: &'static str, path: &Path| {
        let path: Box<Path> = path.into();
        move |source| UnpackError::LowerIo {
            link: link.into(),
            op,
            path,
            source,
        }
    };
    let (atime, mtime) = times_of(md);
    let mode = md.mode() & 0o7777;
    let ft = md.file_type();
    let name = link.to_string_lossy();
    if ft.is_file() {
        let mut input = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(src)
            .map_err(io_lower("opening", src))?;
        let mut output = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dst)
            .map_err(io_lower("creating", dst))?;
        // File to file: std uses copy_file_range where it can.
        io::copy(&mut input, &mut output).map_err(io_lower("copying to", dst))?;
        std::os::unix::fs::fchown(&output, Some(md.uid()), Some(md.gid()))
            .map_err(io_lower("chowning", dst))?;
        output
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_lower("chmoding", dst))?;
        let xattrs = read_xattrs(src, Some(&input), false)
            .map_err(io_lower("reading extended attributes of", src))?;
        set_xattrs(&name, dst, Some(&output), false, &xattrs)?;
        nix::sys::stat::futimens(&output, &atime, &mtime)
            .map_err(|e| io_lower("setting times of", dst)(e.into()))?;
        return Ok(());
    }
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_lower("reading", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_lower("creating symlink", dst))?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        nix::sys::stat::mknod(dst, kind, Mode::from_bits_truncate(0o600), md.rdev())
            .map_err(|e| io_lower("creating device node", dst)(e.into()))?;
    }
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        .map_err(io_lower("chowning", dst))?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(io_lower("chmoding", dst))?;
    }
    let xattrs = read_xattrs(src, None, ft.is_symlink())
        .map_err(io_lower("reading extended attributes of", src))?;
    set_xattrs(&name, dst, None, ft.is_symlink(), &xattrs)?;
    set_times_nofollow(dst, atime, mtime).map_err(io_lower("setting times of", dst))?;
    Ok(())
}

/// Lists and reads the xattrs of `src` (through `file` when given, never following a symlink),
/// leaving out overlayfs's own.
fn read_xattrs(
    src: &Path,
    file: Option<&File>,
    is_symlink: bool,
) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match file.map_or_else(|| xattr::list(src), |f| f.list_xattr()) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for key in names {
        let bytes = key.as_bytes();
        if bytes.starts_with(b"trusted.overlay.") || bytes.starts_with(b"user.overlay.") {
            continue;
        }
        let value = match file {
            Some(f) => f.get_xattr(&key),
            None => xattr::get(src, &key),
        };
        match value {
            Ok(Some(value)) => out.push((key, value)),
            Ok(None) => {}
            Err(e) if xattr_error_tolerable(&e, &key, is_symlink) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{Builder, Header};

    /// Builds layer tarballs in memory, including entries `tar::Builder` would refuse.
    struct Layer(Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(1_600_000_000);
            h.set_size(size);
            h
        }

        fn dir(mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> Self {
            let mut h = Self::header(EntryType::Directory, mode, uid, gid, 0);
            h.set_mtime(mtime);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }

        fn file_full(
            mut self,
            path: &str,
            data: &[u8],
            mode: u32,
            uid: u64,
            gid: u64,
            mtime: u64,
        ) -> Self {
            let mut h = Self::header(EntryType::Regular, mode, uid, gid, data.len() as u64);
            h.set_mtime(mtime);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Self {
            self.file_full(path, data, 0o644, 0, 0, 1_600_000_000)
        }

        fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        /// An entry with name and link name written raw into the header: no validation at all.
        fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
            let mut h = Self::header(kind, 0o644, 0, 0, data.len() as u64);
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn hardlink(self, path: &str, target: &str) -> Self {
            self.raw(EntryType::Link, path.as_bytes(), target.as_bytes(), b"")
        }

        /// A PAX extended header that applies to the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (key, value) in records {
                let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
                let mut len = body_len + 1;
                while len.to_string().len() + body_len != len {
                    len = len.to_string().len() + body_len;
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.set_path("PaxHeaders/x").unwrap();
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.0.append(&h, &data[..]).unwrap();
            self
        }

        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackOutcome, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(tar, Compression::None, dir.path());
        (dir, result)
    }

    fn unpack_ok(tar: &[u8]) -> (tempfile::TempDir, UnpackOutcome) {
        let (dir, result) = unpack(tar);
        (dir, result.unwrap())
    }

    fn lstat(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap()
    }

    #[test]
    fn media_types_and_sniffing() {
        use Compression::*;
        for (mt, want) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
            ("Application/Vnd.OCI.Image.Layer.v1.Tar+Gzip; foo=bar", Gzip),
        ] {
            assert_eq!(Compression::from_media_type(mt).unwrap(), want, "{mt}");
        }
        let err =
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
                .unwrap_err();
        assert!(matches!(err, UnpackError::UnsupportedMediaType(_)));
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Zstd);
        assert_eq!(Compression::sniff(b"etc/"), None);
        assert_eq!(Compression::sniff(&[0x1f]), None);
    }

    #[test]
    fn files_dirs_modes_owners_mtimes() {
        let tar = Layer::new()
            .dir("./", 0o755, 0, 0, 1_500_000_000)
            .dir("./etc/", 0o750, 10, 20, 1_500_000_001)
            .file_full("./etc/conf", b"hello", 0o640, 1000, 1001, 1_500_000_002)
            .dir("./tmp/", 0o1777, 0, 0, 1_500_000_003)
            .file_full("./usr/bin/su", b"#!", 0o4755, 0, 0, 1_500_000_004)
            .file_full("./usr/bin/wall", b"", 0o2755, 1, 5, 1_500_000_005)
            .finish();
        let (dir, out) = unpack_ok(&tar);
        let d = dir.path();

        let root = lstat(d);
        assert_eq!(root.mtime(), 1_500_000_000);
        let etc = lstat(&d.join("etc"));
        assert!(etc.is_dir());
        assert_eq!(
            (etc.mode() & 0o7777, etc.uid(), etc.gid(), etc.mtime()),
            (0o750, 10, 20, 1_500_000_001)
        );
        let conf = lstat(&d.join("etc/conf"));
        assert_eq!(
            (conf.mode() & 0o7777, conf.uid(), conf.gid(), conf.mtime()),
            (0o640, 1000, 1001, 1_500_000_002)
        );
        assert_eq!(fs::read(d.join("etc/conf")).unwrap(), b"hello");
        assert_eq!(lstat(&d.join("tmp")).mode() & 0o7777, 0o1777);
        // setuid survives the chown, even for a non-root owner.
        assert_eq!(lstat(&d.join("usr/bin/su")).mode() & 0o7777, 0o4755);
        let wall = lstat(&d.join("usr/bin/wall"));
        assert_eq!(
            (wall.mode() & 0o7777, wall.uid(), wall.gid()),
            (0o2755, 1, 5)
        );
        // Implicit parents: 0755 root.
        let usr = lstat(&d.join("usr/bin"));
        assert_eq!((usr.mode() & 0o7777, usr.uid(), usr.gid()), (0o755, 0, 0));

        assert_eq!(out.size, 7);
        // etc, conf, tmp, usr, usr/bin, su, wall
        assert_eq!(out.inodes, 7);
        assert!(out.lower_hardlinks.is_empty());
        assert_eq!(out.diff_id, Digest::of(&tar));
    }

    #[test]
    fn setuid_preserved_for_non_root_owner() {
        let tar = Layer::new()
            .file_full("bin/tool", b"x", 0o6755, 1000, 1000, 1)
            .finish();
        let (dir, _) = unpack_ok(&tar);
        let md = lstat(&dir.path().join("bin/tool"));
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o6755, 1000, 1000)
        );
    }

    #[test]
    fn symlinks_keep_absolute_targets() {
        let tar = Layer::new()
            .symlink("bin/sh", "/bin/busybox")
            .symlink("lib", "usr/lib")
            .finish();
        let (dir, out) = unpack_ok(&tar);
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_link(dir.path().join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(lstat(&dir.path().join("bin/sh")).mtime(), 1_600_000_000);
        assert_eq!(out.inodes, 3);
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let tar = Layer::new()
            .symlink("evil", outside.path().to_str().unwrap())
            .file("evil/pwned", b"gotcha")
            .finish();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::Refused { entry, why: Refusal::SymlinkParent(p) } if &**entry == "evil/pwned" && p == Path::new("evil")),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("refusing layer entry \"evil/pwned\": "),
            "{err}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        // Deeper: the symlink is a grandparent, and also via a whiteout and an opaque marker.
        for victim in ["evil/a/b", "evil/.wh.x", "evil/.wh..wh..opq"] {
            let tar = Layer::new()
                .symlink("evil", outside.path().to_str().unwrap())
                .file(victim, b"")
                .finish();
            let (_dir, result) = unpack(&tar);
            assert!(
                matches!(
                    result,
                    Err(UnpackError::Refused {
                        why: Refusal::SymlinkParent(_),
                        ..
                    })
                ),
                "{victim}"
            );
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "{victim}");
        }
    }

    #[test]
    fn dotdot_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let dest = scratch.path().join("layer");
        fs::create_dir(&dest).unwrap();
        for name in ["../etc/passwd", "a/../../x", "./.."] {
            let tar = Layer::new()
                .raw(EntryType::Regular, name.as_bytes(), b"", b"root::0:0")
                .finish();
            let err = unpack_layer(&tar[..], Compression::None, &dest).unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::Refused {
                        why: Refusal::EscapesRoot,
                        ..
                    }
                ),
                "{name}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("refusing layer entry {name:?}: path escapes the layer root")
            );
            assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 1, "{name}");
            assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "{name}");
        }
    }

    #[test]
    fn absolute_paths_are_stripped() {
        let tar = Layer::new()
            .raw(EntryType::Regular, b"/abs/file", b"", b"data")
            .finish();
        let (dir, _) = unpack_ok(&tar);
        assert_eq!(fs::read(dir.path().join("abs/file")).unwrap(), b"data");
    }

    #[test]
    fn hardlink_within_layer() {
        let tar = Layer::new()
            .file("bin/busybox", b"bb")
            .hardlink("bin/ls", "bin/busybox")
            .hardlink("/sbin/init", "./bin/busybox")
            .finish();
        let (dir, out) = unpack_ok(&tar);
        let a = lstat(&dir.path().join("bin/busybox"));
        assert_eq!(a.ino(), lstat(&dir.path().join("bin/ls")).ino());
        assert_eq!(a.ino(), lstat(&dir.path().join("sbin/init")).ino());
        assert_eq!(a.nlink(), 3);
        assert!(out.lower_hardlinks.is_empty());
        assert_eq!(out.size, 2);
    }

    #[test]
    fn hardlink_target_with_dotdot_is_refused() {
        let tar = Layer::new()
            .hardlink("innocent", "../../etc/shadow")
            .finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::Refused { why: Refusal::HardlinkTarget { why, .. }, .. } if **why == Refusal::EscapesRoot),
            "{err}"
        );
        assert!(!dir.path().join("innocent").exists());
    }

    #[test]
    fn hardlink_through_symlink_parent_is_refused() {
        let tar = Layer::new()
            .symlink("etc", "/etc")
            .hardlink("stolen", "etc/passwd")
            .finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::Refused { why: Refusal::HardlinkTarget { why, .. }, .. } if matches!(**why, Refusal::SymlinkParent(_))),
            "{err}"
        );
        assert!(fs::symlink_metadata(dir.path().join("stolen")).is_err());

        // Linking a symlink itself is fine: the link is to the symlink, not what it points at.
        let tar = Layer::new()
            .symlink("passwd", "/etc/passwd")
            .hardlink("alias", "passwd")
            .finish();
        let (dir, _) = unpack_ok(&tar);
        assert_eq!(
            fs::read_link(dir.path().join("alias")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn whiteouts_become_char_devices() {
        let mut h = Layer::header(EntryType::Regular, 0o644, 33, 44, 0);
        let mut layer = Layer::new().dir("var/", 0o755, 0, 0, 1);
        layer
            .0
            .append_data(&mut h, "var/.wh.cache", io::empty())
            .unwrap();
        let tar = layer
            .file("keep", b"k")
            .raw(EntryType::Regular, b".wh.keep", b"", b"")
            .finish();
        let (dir, out) = unpack_ok(&tar);
        let wh = lstat(&dir.path().join("var/cache"));
        assert!(wh.file_type().is_char_device());
        assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 33, 44));
        assert!(!dir.path().join("var/.wh.cache").exists());
        // A whiteout never hides an entry of its own layer.
        assert_eq!(fs::read(dir.path().join("keep")).unwrap(), b"k");
        assert_eq!(out.inodes, 3);

        let tar = Layer::new()
            .raw(EntryType::Regular, b"dir/.wh.", b"", b"")
            .finish();
        assert!(matches!(
            unpack(&tar).1,
            Err(UnpackError::Refused {
                why: Refusal::InvalidWhiteout,
                ..
            })
        ));
    }

    #[test]
    fn opaque_markers_and_aufs_metadata() {
        let tar = Layer::new()
            .dir("etc/", 0o755, 0, 0, 1)
            .file("etc/.wh..wh..opq", b"")
            .file("etc/new", b"n")
            .file("fresh/.wh..wh..opq", b"")
            .file(".wh..wh.plnk/123", b"")
            .file(".wh..wh.aufs", b"")
            .finish();
        let (dir, _) = unpack_ok(&tar);
        let d = dir.path();
        assert_eq!(
            xattr::get(d.join("etc"), OPAQUE_XATTR).unwrap().as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            xattr::get(d.join("fresh"), OPAQUE_XATTR)
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert!(d.join("etc/new").exists());
        assert!(!d.join("etc/.wh..wh..opq").exists());
        assert!(!d.join(".wh..wh.aufs").exists());
        assert!(!d.join(".wh..wh.plnk").exists());
        // The marker doesn't move the directory's mtime.
        assert_eq!(lstat(&d.join("etc")).mtime(), 1);
    }

    fn raw_tar_with_padding() -> Vec<u8> {
        let mut tar = Layer::new()
            .dir("d/", 0o755, 0, 0, 1)
            .file("d/f", &[7u8; 3000])
            .finish();
        tar.extend_from_slice(&[0u8; 10240]); // what `tar` pads records to
        tar
    }

    #[test]
    fn diff_id_covers_the_whole_stream_for_every_compression() {
        let raw = raw_tar_with_padding();
        let want = Digest::of(&raw);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&raw[..], 3).unwrap();

        for (blob, compression) in [
            (raw.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
        ] {
            assert_eq!(Compression::sniff(&blob), compression);
            let dir = tempfile::tempdir().unwrap();
            let out = unpack_layer(&blob[..], compression, dir.path()).unwrap();
            assert_eq!(out.diff_id, want, "{compression:?}");
            assert_eq!(out.size, 3000);
            assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), vec![7u8; 3000]);
        }
    }

    #[test]
    fn lower_hardlinks_are_reported_and_resolved() {
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        for (root, content) in [(top.path(), &b"new"[..]), (bottom.path(), &b"old"[..])] {
            fs::create_dir_all(root.join("usr/bin")).unwrap();
            fs::write(root.join("usr/bin/tool"), content).unwrap();
        }
        let tool = top.path().join("usr/bin/tool");
        std::os::unix::fs::chown(&tool, Some(1000), Some(1001)).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o4751)).unwrap();
        xattr::set(&tool, "user.origin", b"top").unwrap();
        set_times_nofollow(&tool, TimeSpec::new(5, 0), TimeSpec::new(1_234_567, 89)).unwrap();

        let tar = Layer::new()
            .dir("usr/", 0o755, 0, 0, 42)
            .dir("usr/lib/", 0o755, 0, 0, 43)
            .hardlink("usr/lib/tool", "usr/bin/tool")
            .hardlink("usr/lib/tool2", "usr/lib/tool") // chains to the lower target
            .hardlink("gone", "usr/bin/missing")
            .finish();
        let (dir, out) = unpack_ok(&tar);
        let d = dir.path();
        assert_eq!(
            out.lower_hardlinks,
            vec![
                (PathBuf::from("gone"), PathBuf::from("usr/bin/missing")),
                (PathBuf::from("usr/lib/tool"), PathBuf::from("usr/bin/tool")),
                (
                    PathBuf::from("usr/lib/tool2"),
                    PathBuf::from("usr/bin/tool")
                ),
            ]
        );
        let lowers = vec![top.path().to_path_buf(), bottom.path().to_path_buf()];
        let err = resolve_lower_hardlinks(d, &lowers, &out.lower_hardlinks).unwrap_err();
        assert!(
            matches!(err, UnpackError::LowerTargetMissing { .. }),
            "{err}"
        );

        resolve_lower_hardlinks(d, &lowers, &out.lower_hardlinks[1..]).unwrap();
        for link in ["usr/lib/tool", "usr/lib/tool2"] {
            let p = d.join(link);
            assert_eq!(fs::read(&p).unwrap(), b"new");
            let md = lstat(&p);
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid()),
                (0o4751, 1000, 1001)
            );
            assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567, 89));
            assert_eq!(
                xattr::get(&p, "user.origin").unwrap().as_deref(),
                Some(&b"top"[..])
            );
        }
        // The receiving directory keeps the time the layer gave it.
        assert_eq!(lstat(&d.join("usr/lib")).mtime(), 43);

        // A whiteout in the top lower hides the bottom one's file.
        fs::remove_file(&tool).unwrap();
        nix::sys::stat::mknod(&tool, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        let again = tempfile::tempdir().unwrap();
        let links = [(PathBuf::from("x"), PathBuf::from("usr/bin/tool"))];
        let err = resolve_lower_hardlinks(again.path(), &lowers, &links).unwrap_err();
        assert!(
            matches!(err, UnpackError::LowerTargetMissing { .. }),
            "{err}"
        );
        // Without the top lower, the bottom one's file is used.
        resolve_lower_hardlinks(again.path(), &lowers[1..], &links).unwrap();
        assert_eq!(fs::read(again.path().join("x")).unwrap(), b"old");
        // An opaque directory in a higher layer hides it again.
        let opaque = tempfile::tempdir().unwrap();
        fs::create_dir_all(opaque.path().join("usr")).unwrap();
        xattr::set(opaque.path().join("usr"), OPAQUE_XATTR, b"y").unwrap();
        let stack = vec![opaque.path().to_path_buf(), bottom.path().to_path_buf()];
        let third = tempfile::tempdir().unwrap();
        let err = resolve_lower_hardlinks(third.path(), &stack, &links).unwrap_err();
        assert!(
            matches!(err, UnpackError::LowerTargetMissing { .. }),
            "{err}"
        );
        // A symlink on the way in a lower is refused.
        let sneaky = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", sneaky.path().join("usr")).unwrap();
        let err = resolve_lower_hardlinks(third.path(), &[sneaky.path().to_path_buf()], &links)
            .unwrap_err();
        assert!(matches!(err, UnpackError::LowerLink { .. }), "{err}");
    }

    #[test]
    fn later_entries_win() {
        let outside = tempfile::tempdir().unwrap();
        let tar = Layer::new()
            .file("a", b"first")
            .file("a", b"second")
            .dir("d/", 0o755, 0, 0, 1)
            .file("d/child", b"c")
            .file("d", b"now a file")
            .symlink("s", outside.path().join("target").to_str().unwrap())
            .file("s", b"replaced the symlink")
            .file("f", b"file")
            .dir("f/", 0o700, 0, 0, 1)
            .file("f/inside", b"i")
            .hardlink("h", "a")
            .file("a", b"third")
            .finish();
        let (dir, _) = unpack_ok(&tar);
        let d = dir.path();
        assert_eq!(fs::read(d.join("a")).unwrap(), b"third");
        // `h` was linked to the second version, which the third replaced rather than overwrote.
        assert_eq!(fs::read(d.join("h")).unwrap(), b"second");
        assert_eq!(fs::read(d.join("d")).unwrap(), b"now a file");
        assert!(lstat(&d.join("s")).is_file());
        assert_eq!(fs::read(d.join("s")).unwrap(), b"replaced the symlink");
        assert!(!outside.path().join("target").exists());
        assert_eq!(lstat(&d.join("f")).mode() & 0o7777, 0o700);
        assert_eq!(fs::read(d.join("f/inside")).unwrap(), b"i");
    }

    #[test]
    fn devices_fifos_long_names_and_pax_xattrs() {
        let mut layer = Layer::new();
        let mut h = Layer::header(EntryType::Char, 0o666, 0, 0, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        layer
            .0
            .append_data(&mut h, "dev/null", io::empty())
            .unwrap();
        let mut h = Layer::header(EntryType::Fifo, 0o600, 7, 7, 0);
        layer
            .0
            .append_data(&mut h, "run/pipe", io::empty())
            .unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let tar = layer
            .file(&long, b"long")
            .pax(&[
                ("SCHILY.xattr.user.note", b"hi"),
                ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
                ("mtime", b"1700000000.5"),
                ("path", b"pax/named/file"),
            ])
            .file("ignored-by-pax-path", b"p")
            .finish();
        let (dir, _) = unpack_ok(&tar);
        let d = dir.path();
        let null = lstat(&d.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777),
            (nix::sys::stat::makedev(1, 3), 0o666)
        );
        let pipe = lstat(&d.join("run/pipe"));
        assert!(pipe.file_type().is_fifo());
        assert_eq!((pipe.uid(), pipe.mode() & 0o7777), (7, 0o600));
        assert_eq!(fs::read(d.join(&long)).unwrap(), b"long");
        let p = d.join("pax/named/file");
        assert_eq!(fs::read(&p).unwrap(), b"p");
        assert_eq!(
            xattr::get(&p, "user.note").unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        assert!(xattr::get(&p, "security.capability").unwrap().is_some());
        assert!(
            xattr::get(&p, "trusted.overlay.redirect")
                .unwrap()
                .is_none()
        );
        let md = lstat(&p);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 500_000_000));
    }

    #[test]
    fn huge_metadata_is_refused_without_buffering_it() {
        let size = 64 << 20;
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.set_path("././@LongLink").unwrap();
        h.set_size(size);
        h.set_cksum();
        let stream = io::Cursor::new(h.as_bytes().to_vec()).chain(io::repeat(b'a').take(size));
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(stream, Compression::None, dir.path()).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");
    }

    #[test]
    fn root_and_destination_checks() {
        let tar = Layer::new()
            .raw(EntryType::Symlink, b"./", b"/", b"")
            .finish();
        assert!(matches!(
            unpack(&tar).1,
            Err(UnpackError::Refused {
                why: Refusal::RootNotDirectory,
                ..
            })
        ));
        let tar = Layer::new().raw(EntryType::Regular, b"", b"", b"").finish();
        assert!(matches!(
            unpack(&tar).1,
            Err(UnpackError::Refused {
                why: Refusal::EmptyName,
                ..
            })
        ));

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), b"").unwrap();
        let err = unpack_layer(&b""[..], Compression::None, dir.path()).unwrap_err();
        assert!(matches!(err, UnpackError::Destination { .. }), "{err}");
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.000000001999"),
            Some(TimeSpec::new(12, 1))
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
    }
}
