//! Cgroups of containers and pods: where they are on this host, and reading and writing their files.
//!
//! The host runs cgroup v1 (legacy, or hybrid with a cgroup2 at `/sys/fs/cgroup/unified` that
//! holds no controllers) or v2 (cgroup2 at `/sys/fs/cgroup`); [`detect_layout`] tells which from
//! the file system magic. A cgroup is named by its path relative to the hierarchy root, as the OCI
//! `linux.cgroupsPath` is: on v1 every controller has its own tree (`/sys/fs/cgroup/memory/<path>`),
//! on v2 there is one (`/sys/fs/cgroup/<path>`).
//!
//! The spec builder gives containers a cgroupfs path (`/keelson/pod-<sandbox>/<id>`, or
//! `<cgroup_parent>/<id>`) or a systemd one (`<slice>:keelson:<id>`). libcontainer expands the
//! systemd form to `<expanded slice>/keelson-<id>.scope` when it drives systemd, and uses it as a
//! literal directory name when it does not (the shim's `with_systemd(false)`, and every v1 host):
//! [`container_cgroup_candidates`] lists both and [`resolve`] keeps the one that exists.
//!
//! Files are read and written through [`CgroupReader`]/[`CgroupWriter`], so stats and resource
//! updates are unit-tested with [`FakeCgroups`].

use keelson_cri::v1::LinuxContainerResources;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why reading or changing a cgroup failed; names its owner (`container <id>`, `pod sandbox <id>`).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{owner}: cannot read cgroup file {file}: {source}")]
    Read {
        owner: String,
        file: String,
        source: io::Error,
    },
    #[error("{owner}: cannot set cgroup file {file} to {value:?}: {source}{hint}")]
    Write {
        owner: String,
        file: String,
        value: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("{owner}: invalid {field}: {reason}")]
    Invalid {
        owner: String,
        field: &'static str,
        reason: String,
    },
    #[error("{owner}: {what} needs cgroup v2, and this host runs cgroup v1")]
    NeedsV2 { owner: String, what: String },
    #[error(
        "{owner}: memory limit {limit} is below the current working set of {working_set} bytes; \
         the kernel would OOM-kill the container instead of refusing"
    )]
    BelowUsage {
        owner: String,
        limit: i64,
        working_set: u64,
    },
    #[error("{owner}: no cgroup found at {tried}")]
    Missing { owner: String, tried: String },
}

/// How cgroups are mounted under `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// v1 controllers only.
    Legacy,
    /// v1 controllers plus a cgroup2 at `unified` (systemd's hybrid mode): controllers are v1.
    Hybrid,
    /// cgroup2 at the root.
    Unified,
}

impl CgroupLayout {
    pub fn version(self) -> CgroupVersion {
        match self {
            CgroupLayout::Legacy | CgroupLayout::Hybrid => CgroupVersion::V1,
            CgroupLayout::Unified => CgroupVersion::V2,
        }
    }
}

/// Which kind of controllers the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The layout of the cgroup mount at `root` (normally `/sys/fs/cgroup`).
pub fn detect_layout(root: &Path) -> CgroupLayout {
    if is_cgroup2(root) {
        CgroupLayout::Unified
    } else if is_cgroup2(&root.join("unified")) {
        CgroupLayout::Hybrid
    } else {
        CgroupLayout::Legacy
    }
}

/// A cgroup controller: on v1 it names the hierarchy a file lives in; on v2 it is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Cpu,
    Cpuacct,
    Cpuset,
    Memory,
    Pids,
    Hugetlb,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Hugetlb => "hugetlb",
        }
    }

    const ALL: [Controller; 6] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Pids,
        Controller::Hugetlb,
    ];
}

/// Reading the files of cgroups named by their path relative to the hierarchy root.
pub trait CgroupReader: Send + Sync {
    fn version(&self) -> CgroupVersion;
    /// The contents of `file` (`memory.stat`) of `cgroup`, in `ctrl`'s hierarchy on v1.
    fn read(&self, ctrl: Controller, cgroup: &Path, file: &str) -> io::Result<String>;
    /// Whether `file` exists (an empty `file`: whether the cgroup directory does).
    fn has(&self, ctrl: Controller, cgroup: &Path, file: &str) -> bool;
}

/// Writing cgroup files (resource updates).
pub trait CgroupWriter: CgroupReader {
    fn write(&self, ctrl: Controller, cgroup: &Path, file: &str, value: &str) -> io::Result<()>;
}

/// The cgroup file system of this host.
#[derive(Debug, Clone)]
pub struct HostCgroups {
    root: PathBuf,
    layout: CgroupLayout,
    /// v1: the mount point of each controller's hierarchy.
    v1_dirs: HashMap<Controller, PathBuf>,
}

impl HostCgroups {
    /// The cgroups mounted at `root` (normally `/sys/fs/cgroup`), layout detected.
    pub fn detect(root: &Path) -> Self {
        let layout = detect_layout(root);
        let mut v1_dirs = HashMap::new();
        if layout.version() == CgroupVersion::V1 {
            let entries: Vec<String> = fs::read_dir(root)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            for ctrl in Controller::ALL {
                // `cpu` is usually a directory or a symlink to `cpu,cpuacct`; take either.
                let dir = if root.join(ctrl.name()).is_dir() {
                    Some(root.join(ctrl.name()))
                } else {
                    entries
                        .iter()
                        .find(|e| e.split(',').any(|c| c == ctrl.name()))
                        .map(|e| root.join(e))
                };
                if let Some(dir) = dir {
                    v1_dirs.insert(ctrl, dir);
                }
            }
        }
        Self {
            root: root.to_owned(),
            layout,
            v1_dirs,
        }
    }

    pub fn layout(&self) -> CgroupLayout {
        self.layout
    }

    /// The directory of `cgroup` in `ctrl`'s hierarchy (v1) or the unified one (v2).
    pub fn dir(&self, ctrl: Controller, cgroup: &Path) -> PathBuf {
        let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
        match self.layout.version() {
            CgroupVersion::V2 => self.root.join(rel),
            CgroupVersion::V1 => self
                .v1_dirs
                .get(&ctrl)
                .cloned()
                .unwrap_or_else(|| self.root.join(ctrl.name()))
                .join(rel),
        }
    }
}

impl CgroupReader for HostCgroups {
    fn version(&self) -> CgroupVersion {
        self.layout.version()
    }

    fn read(&self, ctrl: Controller, cgroup: &Path, file: &str) -> io::Result<String> {
        fs::read_to_string(self.dir(ctrl, cgroup).join(file))
    }

    fn has(&self, ctrl: Controller, cgroup: &Path, file: &str) -> bool {
        let dir = self.dir(ctrl, cgroup);
        if file.is_empty() {
            dir.is_dir()
        } else {
            dir.join(file).exists()
        }
    }
}

impl CgroupWriter for HostCgroups {
    fn write(&self, ctrl: Controller, cgroup: &Path, file: &str, value: &str) -> io::Result<()> {
        // One write(2) of the whole value: cgroup files take a value per write, and the kernel's
        // error for it (EINVAL, EBUSY) is what the caller needs to see.
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.dir(ctrl, cgroup).join(file))?;
        f.write_all(value.as_bytes())
    }
}

/// The path systemd gives the slice `name` (`a-b.slice` → `/a.slice/a-b.slice`); `None` if `name`
/// is not a slice name.
pub fn expand_slice(name: &str) -> Option<PathBuf> {
    let base = name.strip_suffix(".slice")?;
    if base.is_empty() || name.contains('/') {
        return None;
    }
    if base == "-" {
        return Some(PathBuf::from("/"));
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in base.split('-') {
        if part.is_empty() {
            return None;
        }
        path.push(format!("{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Some(path)
}

fn relative(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_owned()
}

/// Where a container with OCI `linux.cgroupsPath` `cgroups_path` may have its cgroup, most likely
/// first. A systemd-style `slice:prefix:name` gives the expanded scope and the literal name.
pub fn container_cgroup_candidates(cgroups_path: &str) -> Vec<PathBuf> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let systemd = match parts.as_slice() {
        [slice, prefix, name] => Some((*slice, *prefix, *name)),
        [prefix, name] => Some(("", *prefix, *name)),
        _ => None,
    };
    let mut out = Vec::new();
    if let Some((slice, prefix, name)) = systemd {
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else {
            format!("{prefix}-{name}.scope")
        };
        if let Some(parent) = expand_slice(slice) {
            out.push(relative(&parent.join(unit)));
        }
    }
    out.push(relative(Path::new(cgroups_path)));
    out
}

/// Where a pod's own cgroup (the parent of its containers') may be: the sandbox's
/// `cgroup_parent` (a path, or a systemd slice expanded), else keelson's per-pod default under the
/// cgroupfs driver. Empty when the pod has no cgroup of its own (systemd driver, no parent).
pub fn pod_cgroup_candidates(cgroup_parent: &str, sandbox_id: &str) -> Vec<PathBuf> {
    if cgroup_parent.is_empty() {
        return vec![PathBuf::from(format!("keelson/pod-{sandbox_id}"))];
    }
    let mut out = Vec::new();
    if let Some(expanded) = expand_slice(cgroup_parent) {
        out.push(relative(&expanded));
    }
    out.push(relative(Path::new(cgroup_parent)));
    out
}

/// The first candidate whose cgroup exists (memory or CPU accounting hierarchy on v1).
pub fn resolve(cgroups: &dyn CgroupReader, candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|c| {
            !c.as_os_str().is_empty()
                && (cgroups.has(Controller::Memory, c, "")
                    || cgroups.has(Controller::Cpuacct, c, ""))
        })
        .cloned()
}

/// cgroup v2 `cpu.weight` for v1 `cpu.shares` (the conversion runc and crun use).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn valid_cpuset(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
}

/// Checks a CRI resources request before anything is written. Zero means "leave as is".
pub fn validate_resources(
    owner: &str,
    r: &LinuxContainerResources,
    version: CgroupVersion,
) -> Result<(), CgroupError> {
    let bad = |field, reason: String| CgroupError::Invalid {
        owner: owner.to_string(),
        field,
        reason,
    };
    if r.cpu_period < 0 {
        return Err(bad("cpu_period", format!("{} is negative", r.cpu_period)));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(bad(
            "cpu_period",
            format!("{} µs is outside 1000..=1000000", r.cpu_period),
        ));
    }
    if r.cpu_quota < -1 {
        return Err(bad(
            "cpu_quota",
            format!("{} is negative (-1 means unlimited)", r.cpu_quota),
        ));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1000 {
        return Err(bad(
            "cpu_quota",
            format!("{} µs is below the kernel's minimum of 1000", r.cpu_quota),
        ));
    }
    if r.cpu_shares < 0 {
        return Err(bad("cpu_shares", format!("{} is negative", r.cpu_shares)));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(bad(
            "memory_limit_in_bytes",
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(bad(
            "memory_swap_limit_in_bytes",
            format!(
                "{} is negative (-1 means unlimited)",
                r.memory_swap_limit_in_bytes
            ),
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(bad(
            "memory_swap_limit_in_bytes",
            format!(
                "{} is below the memory limit {} (it counts memory plus swap)",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        ));
    }
    for (field, value) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !valid_cpuset(value) {
            return Err(bad(
                field,
                format!("{value:?} is not a list like \"0-2,4\""),
            ));
        }
    }
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() || !h.page_size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad(
                "hugepage_limits",
                format!("page size {:?} is not like \"2MB\"", h.page_size),
            ));
        }
    }
    if !r.unified.is_empty() && version == CgroupVersion::V1 {
        return Err(CgroupError::NeedsV2 {
            owner: owner.to_string(),
            what: "the unified resources map".into(),
        });
    }
    for key in r.unified.keys() {
        if key.is_empty()
            || key.contains('/')
            || key.starts_with('.')
            || !key.contains('.')
            || key.starts_with("cgroup.")
        {
            return Err(bad(
                "unified",
                format!("{key:?} is not a controller file name like \"memory.high\""),
            ));
        }
    }
    Ok(())
}

/// Writes one file; the kernel's refusal comes back with the file and value named.
fn set(
    w: &dyn CgroupWriter,
    owner: &str,
    ctrl: Controller,
    cgroup: &Path,
    file: &str,
    value: &str,
) -> Result<(), CgroupError> {
    w.write(ctrl, cgroup, file, value).map_err(|source| {
        let hint = match (ctrl, source.raw_os_error()) {
            (Controller::Memory, Some(libc::EBUSY)) => {
                " (the container uses more memory than that and the kernel could not reclaim enough)"
            }
            (Controller::Cpuset, Some(libc::EINVAL)) => {
                " (the cpus or memory nodes must exist and be allowed in the parent cgroup)"
            }
            _ => "",
        };
        CgroupError::Write {
            owner: owner.to_string(),
            file: file.to_string(),
            value: value.to_string(),
            source,
            hint,
        }
    })
}

fn get(
    r: &dyn CgroupReader,
    owner: &str,
    ctrl: Controller,
    cgroup: &Path,
    file: &str,
) -> Result<String, CgroupError> {
    r.read(ctrl, cgroup, file)
        .map_err(|source| CgroupError::Read {
            owner: owner.to_string(),
            file: file.to_string(),
            source,
        })
        .map(|s| s.trim().to_string())
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Applies the set (non-zero) fields of `r` to `cgroup`. Call [`validate_resources`] first.
pub fn apply_resources(
    w: &dyn CgroupWriter,
    owner: &str,
    cgroup: &Path,
    r: &LinuxContainerResources,
) -> Result<(), CgroupError> {
    match w.version() {
        CgroupVersion::V1 => apply_v1(w, owner, cgroup, r),
        CgroupVersion::V2 => apply_v2(w, owner, cgroup, r),
    }
}

fn apply_v1(
    w: &dyn CgroupWriter,
    owner: &str,
    cg: &Path,
    r: &LinuxContainerResources,
) -> Result<(), CgroupError> {
    use Controller::*;
    if r.cpu_shares > 0 {
        set(w, owner, Cpu, cg, "cpu.shares", &r.cpu_shares.to_string())?;
    }
    // The kernel checks quota against period (and the parent's): if the new period is refused
    // as it stands, set the quota first and try again.
    match (r.cpu_period > 0, r.cpu_quota != 0) {
        (true, true) => {
            let (period, quota) = (r.cpu_period.to_string(), r.cpu_quota.to_string());
            if set(w, owner, Cpu, cg, "cpu.cfs_period_us", &period).is_err() {
                set(w, owner, Cpu, cg, "cpu.cfs_quota_us", &quota)?;
                set(w, owner, Cpu, cg, "cpu.cfs_period_us", &period)?;
            } else {
                set(w, owner, Cpu, cg, "cpu.cfs_quota_us", &quota)?;
            }
        }
        (true, false) => set(
            w,
            owner,
            Cpu,
            cg,
            "cpu.cfs_period_us",
            &r.cpu_period.to_string(),
        )?,
        (false, true) => set(
            w,
            owner,
            Cpu,
            cg,
            "cpu.cfs_quota_us",
            &r.cpu_quota.to_string(),
        )?,
        (false, false) => {}
    }
    if !r.cpuset_cpus.is_empty() {
        set(w, owner, Cpuset, cg, "cpuset.cpus", &r.cpuset_cpus)?;
    }
    if !r.cpuset_mems.is_empty() {
        set(w, owner, Cpuset, cg, "cpuset.mems", &r.cpuset_mems)?;
    }
    if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes != 0 {
        let memsw = w.has(Memory, cg, "memory.memsw.limit_in_bytes");
        // memory+swap counts memory too, so it follows the limit unless set (no swap, as at
        // create); -1 lifts it.
        let swap = match r.memory_swap_limit_in_bytes {
            0 => r.memory_limit_in_bytes,
            s => s,
        };
        let current = get(w, owner, Memory, cg, "memory.limit_in_bytes")?
            .parse::<u64>()
            .unwrap_or(u64::MAX);
        let limit = (r.memory_limit_in_bytes > 0).then(|| r.memory_limit_in_bytes.to_string());
        // memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes at every step.
        let raising = r.memory_limit_in_bytes as u64 > current;
        if memsw && swap != 0 && raising {
            set(
                w,
                owner,
                Memory,
                cg,
                "memory.memsw.limit_in_bytes",
                &swap.to_string(),
            )?;
        }
        if let Some(limit) = &limit {
            set(w, owner, Memory, cg, "memory.limit_in_bytes", limit)?;
        }
        if memsw && swap != 0 && !raising {
            set(
                w,
                owner,
                Memory,
                cg,
                "memory.memsw.limit_in_bytes",
                &swap.to_string(),
            )?;
        }
    }
    for h in &r.hugepage_limits {
        let file = format!("hugetlb.{}.limit_in_bytes", h.page_size);
        set(w, owner, Hugetlb, cg, &file, &h.limit.to_string())?;
    }
    Ok(())
}

fn apply_v2(
    w: &dyn CgroupWriter,
    owner: &str,
    cg: &Path,
    r: &LinuxContainerResources,
) -> Result<(), CgroupError> {
    use Controller::*;
    if r.cpu_shares > 0 {
        let weight = shares_to_weight(r.cpu_shares as u64);
        set(w, owner, Cpu, cg, "cpu.weight", &weight.to_string())?;
    }
    if r.cpu_period > 0 || r.cpu_quota != 0 {
        let current = get(w, owner, Cpu, cg, "cpu.max").unwrap_or_default();
        let mut it = current.split_whitespace();
        let (cur_quota, cur_period) = (
            it.next().unwrap_or("max").to_string(),
            it.next().unwrap_or("100000").to_string(),
        );
        let quota = match r.cpu_quota {
            0 => cur_quota,
            -1 => "max".to_string(),
            q => q.to_string(),
        };
        let period = if r.cpu_period > 0 {
            r.cpu_period.to_string()
        } else {
            cur_period
        };
        set(w, owner, Cpu, cg, "cpu.max", &format!("{quota} {period}"))?;
    }
    if !r.cpuset_cpus.is_empty() {
        set(w, owner, Cpuset, cg, "cpuset.cpus", &r.cpuset_cpus)?;
    }
    if !r.cpuset_mems.is_empty() {
        set(w, owner, Cpuset, cg, "cpuset.mems", &r.cpuset_mems)?;
    }
    if r.memory_limit_in_bytes > 0 {
        // Unlike v1, v2 does not refuse a limit below usage: it OOM-kills. Refuse here instead
        // when what cannot be reclaimed already exceeds it.
        let usage = get(w, owner, Memory, cg, "memory.current")
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let inactive = w
            .read(Memory, cg, "memory.stat")
            .ok()
            .and_then(|s| keyed_value(&s, "inactive_file"))
            .unwrap_or(0);
        if let Some(usage) = usage {
            let working_set = usage.saturating_sub(inactive);
            if (r.memory_limit_in_bytes as u64) < working_set {
                return Err(CgroupError::BelowUsage {
                    owner: owner.to_string(),
                    limit: r.memory_limit_in_bytes,
                    working_set,
                });
            }
        }
        set(
            w,
            owner,
            Memory,
            cg,
            "memory.max",
            &r.memory_limit_in_bytes.to_string(),
        )?;
    }
    if w.has(Memory, cg, "memory.swap.max") {
        // v2 limits swap alone; the CRI value is memory plus swap.
        let swap = match (r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes) {
            (-1, _) => Some("max".to_string()),
            (0, l) if l > 0 => Some("0".to_string()),
            (s, l) if s > 0 && l > 0 => Some((s - l).to_string()),
            (s, _) if s > 0 => {
                let limit = get(w, owner, Memory, cg, "memory.max")?;
                limit
                    .parse::<i64>()
                    .ok()
                    .map(|l| (s - l).max(0).to_string())
            }
            _ => None,
        };
        if let Some(swap) = swap {
            set(w, owner, Memory, cg, "memory.swap.max", &swap)?;
        }
    }
    for h in &r.hugepage_limits {
        let file = format!("hugetlb.{}.max", h.page_size);
        set(w, owner, Hugetlb, cg, &file, &h.limit.to_string())?;
    }
    let mut unified: Vec<_> = r.unified.iter().collect();
    unified.sort();
    for (file, value) in unified {
        set(w, owner, Memory, cg, file, value)?;
    }
    Ok(())
}

/// Folds an update into the resources a container was created with: set fields replace, zero
/// fields keep the old value, `unified` entries are merged by key.
pub fn merge_resources(current: &mut LinuxContainerResources, update: &LinuxContainerResources) {
    if update.cpu_period != 0 {
        current.cpu_period = update.cpu_period;
    }
    if update.cpu_quota != 0 {
        current.cpu_quota = update.cpu_quota;
    }
    if update.cpu_shares != 0 {
        current.cpu_shares = update.cpu_shares;
    }
    if update.memory_limit_in_bytes != 0 {
        current.memory_limit_in_bytes = update.memory_limit_in_bytes;
    }
    if update.memory_swap_limit_in_bytes != 0 {
        current.memory_swap_limit_in_bytes = update.memory_swap_limit_in_bytes;
    }
    if !update.cpuset_cpus.is_empty() {
        current.cpuset_cpus = update.cpuset_cpus.clone();
    }
    if !update.cpuset_mems.is_empty() {
        current.cpuset_mems = update.cpuset_mems.clone();
    }
    for h in &update.hugepage_limits {
        match current
            .hugepage_limits
            .iter_mut()
            .find(|c| c.page_size == h.page_size)
        {
            Some(c) => c.limit = h.limit,
            None => current.hugepage_limits.push(h.clone()),
        }
    }
    for (k, v) in &update.unified {
        current.unified.insert(k.clone(), v.clone());
    }
}

/// A fake cgroup file: controller (v1 only), cgroup, file name.
#[cfg(test)]
type FakeKey = (Option<Controller>, PathBuf, String);

/// In-memory cgroup files for unit tests: `(controller on v1, cgroup, file) -> contents`.
#[cfg(test)]
pub struct FakeCgroups {
    pub version: CgroupVersion,
    pub files: std::sync::Mutex<HashMap<FakeKey, String>>,
    /// Writes refused with this errno, by file name.
    pub refuse: std::sync::Mutex<HashMap<String, i32>>,
}

#[cfg(test)]
impl FakeCgroups {
    pub fn new(version: CgroupVersion) -> Self {
        Self {
            version,
            files: Default::default(),
            refuse: Default::default(),
        }
    }

    fn key(&self, ctrl: Controller, cgroup: &Path, file: &str) -> FakeKey {
        let ctrl = (self.version == CgroupVersion::V1).then_some(ctrl);
        (ctrl, relative(cgroup), file.to_string())
    }

    pub fn put(&self, ctrl: Controller, cgroup: &str, file: &str, contents: &str) {
        let key = self.key(ctrl, Path::new(cgroup), file);
        self.files.lock().unwrap().insert(key, contents.to_string());
    }

    pub fn get(&self, ctrl: Controller, cgroup: &str, file: &str) -> Option<String> {
        let key = self.key(ctrl, Path::new(cgroup), file);
        self.files.lock().unwrap().get(&key).cloned()
    }
}

#[cfg(test)]
impl CgroupReader for FakeCgroups {
    fn version(&self) -> CgroupVersion {
        self.version
    }

    fn read(&self, ctrl: Controller, cgroup: &Path, file: &str) -> io::Result<String> {
        let key = self.key(ctrl, cgroup, file);
        self.files
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn has(&self, ctrl: Controller, cgroup: &Path, file: &str) -> bool {
        let (c, dir, name) = self.key(ctrl, cgroup, file);
        self.files
            .lock()
            .unwrap()
            .keys()
            .any(|(kc, kd, kn)| *kc == c && *kd == dir && (name.is_empty() || *kn == name))
    }
}

#[cfg(test)]
impl CgroupWriter for FakeCgroups {
    fn write(&self, ctrl: Controller, cgroup: &Path, file: &str, value: &str) -> io::Result<()> {
        if let Some(errno) = self.refuse.lock().unwrap().get(file) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        let key = self.key(ctrl, cgroup, file);
        self.files.lock().unwrap().insert(key, value.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_cri::v1::HugepageLimit;

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1.slice").unwrap(),
            PathBuf::from("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(
            expand_slice("system.slice").unwrap(),
            PathBuf::from("/system.slice")
        );
        assert_eq!(expand_slice("-.slice").unwrap(), PathBuf::from("/"));
        assert!(expand_slice("a--b.slice").is_none());
        assert!(expand_slice("/kubepods").is_none());
    }

    #[test]
    fn container_paths_cover_cgroupfs_and_both_systemd_readings() {
        assert_eq!(
            container_cgroup_candidates("/keelson/pod-s/c1"),
            vec![PathBuf::from("keelson/pod-s/c1")]
        );
        assert_eq!(
            container_cgroup_candidates("kubepods-besteffort-pod9.slice:keelson:c1"),
            vec![
                PathBuf::from(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/keelson-c1.scope"
                ),
                PathBuf::from("kubepods-besteffort-pod9.slice:keelson:c1"),
            ]
        );
        assert_eq!(
            container_cgroup_candidates("keelson:c1")[0],
            PathBuf::from("system.slice/keelson-c1.scope")
        );
        assert_eq!(
            pod_cgroup_candidates("", "s1"),
            vec![PathBuf::from("keelson/pod-s1")]
        );
        assert_eq!(
            pod_cgroup_candidates("kubepods-pod1.slice", "s1"),
            vec![
                PathBuf::from("kubepods.slice/kubepods-pod1.slice"),
                PathBuf::from("kubepods-pod1.slice")
            ]
        );
        assert_eq!(
            pod_cgroup_candidates("/kubepods/burstable/pod1", "s1"),
            vec![PathBuf::from("kubepods/burstable/pod1")]
        );
    }

    #[test]
    fn resolve_takes_the_candidate_that_exists() {
        let fake = FakeCgroups::new(CgroupVersion::V1);
        fake.put(Controller::Memory, "s.slice:keelson:c1", "memory.stat", "");
        let found = resolve(&fake, &container_cgroup_candidates("s.slice:keelson:c1"));
        assert_eq!(found, Some(PathBuf::from("s.slice:keelson:c1")));
        assert_eq!(
            resolve(&fake, &container_cgroup_candidates("/other/c2")),
            None
        );
    }

    #[test]
    fn host_layout_is_detected() {
        let host = HostCgroups::detect(Path::new("/sys/fs/cgroup"));
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            assert_eq!(host.layout(), CgroupLayout::Unified);
            assert_eq!(
                host.dir(Controller::Memory, Path::new("/a/b")),
                PathBuf::from("/sys/fs/cgroup/a/b")
            );
        } else if Path::new("/sys/fs/cgroup/memory").is_dir() {
            assert_ne!(host.layout(), CgroupLayout::Unified);
            assert_eq!(
                host.dir(Controller::Memory, Path::new("/a/b")),
                PathBuf::from("/sys/fs/cgroup/memory/a/b")
            );
        }
    }

    #[test]
    fn v2_shares_become_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn bad_requests_are_refused_by_field() {
        let owner = "container c1";
        let check = |r: LinuxContainerResources, v| validate_resources(owner, &r, v);
        let e = check(
            LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            },
            CgroupVersion::V1,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("container c1: invalid memory_limit_in_bytes"),
            "{e}"
        );
        assert!(
            check(
                LinuxContainerResources {
                    cpu_quota: -2,
                    ..Default::default()
                },
                CgroupVersion::V2
            )
            .is_err()
        );
        assert!(
            check(
                LinuxContainerResources {
                    cpuset_cpus: "0;rm".into(),
                    ..Default::default()
                },
                CgroupVersion::V2
            )
            .is_err()
        );
        let unified = LinuxContainerResources {
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            ..Default::default()
        };
        assert!(matches!(
            check(unified.clone(), CgroupVersion::V1),
            Err(CgroupError::NeedsV2 { .. })
        ));
        assert!(check(unified, CgroupVersion::V2).is_ok());
        let escape = LinuxContainerResources {
            unified: [("../../x.y".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(check(escape, CgroupVersion::V2).is_err());
        assert!(check(LinuxContainerResources::default(), CgroupVersion::V1).is_ok());
    }

    #[test]
    fn v1_update_writes_each_controller_and_orders_memsw() {
        let fake = FakeCgroups::new(CgroupVersion::V1);
        let cg = "keelson/pod-s/c1";
        fake.put(
            Controller::Memory,
            cg,
            "memory.limit_in_bytes",
            "9223372036854771712",
        );
        fake.put(
            Controller::Memory,
            cg,
            "memory.memsw.limit_in_bytes",
            "9223372036854771712",
        );
        let r = LinuxContainerResources {
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpuset_cpus: "0".into(),
            memory_limit_in_bytes: 64 << 20,
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        apply_resources(&fake, "container c1", Path::new(cg), &r).unwrap();
        let got = |c, f| fake.get(c, cg, f).unwrap();
        assert_eq!(got(Controller::Cpu, "cpu.shares"), "512");
        assert_eq!(got(Controller::Cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(got(Controller::Cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(got(Controller::Cpuset, "cpuset.cpus"), "0");
        assert_eq!(got(Controller::Memory, "memory.limit_in_bytes"), "67108864");
        assert_eq!(
            got(Controller::Memory, "memory.memsw.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(
            got(Controller::Hugetlb, "hugetlb.2MB.limit_in_bytes"),
            "4194304"
        );

        // Raising the limit past memory+swap: memsw goes first, else the kernel refuses.
        fake.refuse
            .lock()
            .unwrap()
            .insert("memory.limit_in_bytes".into(), libc::EINVAL);
        let up = LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        };
        let e = apply_resources(&fake, "container c1", Path::new(cg), &up).unwrap_err();
        assert_eq!(
            got(Controller::Memory, "memory.memsw.limit_in_bytes"),
            "134217728"
        );
        assert!(
            e.to_string()
                .starts_with("container c1: cannot set cgroup file memory.limit_in_bytes")
        );
    }

    #[test]
    fn v1_kernel_refusal_passes_through_with_a_hint() {
        let fake = FakeCgroups::new(CgroupVersion::V1);
        let cg = "keelson/pod-s/c1";
        fake.put(Controller::Memory, cg, "memory.limit_in_bytes", "67108864");
        fake.refuse
            .lock()
            .unwrap()
            .insert("memory.limit_in_bytes".into(), libc::EBUSY);
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 4096,
            ..Default::default()
        };
        let e = apply_resources(&fake, "container c1", Path::new(cg), &r).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("\"4096\"") && msg.contains("busy") && msg.contains("reclaim"),
            "{msg}"
        );
    }

    #[test]
    fn v2_update_writes_unified_files_and_guards_the_working_set() {
        let fake = FakeCgroups::new(CgroupVersion::V2);
        let cg = "kubepods.slice/keelson-c1.scope";
        fake.put(Controller::Cpu, cg, "cpu.max", "max 100000");
        fake.put(Controller::Memory, cg, "memory.current", "50000000");
        fake.put(
            Controller::Memory,
            cg,
            "memory.stat",
            "anon 30000000\ninactive_file 10000000\n",
        );
        fake.put(Controller::Memory, cg, "memory.swap.max", "max");
        let r = LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 20_000,
            memory_limit_in_bytes: 64 << 20,
            unified: [("memory.high".to_string(), "60000000".to_string())].into(),
            ..Default::default()
        };
        apply_resources(&fake, "container c1", Path::new(cg), &r).unwrap();
        let got = |f| fake.get(Controller::Memory, cg, f).unwrap();
        assert_eq!(got("cpu.weight"), "39");
        assert_eq!(got("cpu.max"), "20000 100000");
        assert_eq!(got("memory.max"), "67108864");
        assert_eq!(got("memory.swap.max"), "0");
        assert_eq!(got("memory.high"), "60000000");

        let period_only = LinuxContainerResources {
            cpu_period: 50_000,
            ..Default::default()
        };
        apply_resources(&fake, "container c1", Path::new(cg), &period_only).unwrap();
        assert_eq!(got("cpu.max"), "20000 50000");

        let too_low = LinuxContainerResources {
            memory_limit_in_bytes: 30_000_000,
            ..Default::default()
        };
        let e = apply_resources(&fake, "container c1", Path::new(cg), &too_low).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::BelowUsage {
                    working_set: 40_000_000,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(got("memory.max"), "67108864", "nothing written");
    }

    #[test]
    fn updates_merge_into_the_recorded_resources() {
        let mut cur = LinuxContainerResources {
            cpu_shares: 2,
            memory_limit_in_bytes: 100,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        };
        merge_resources(
            &mut cur,
            &LinuxContainerResources {
                memory_limit_in_bytes: 200,
                cpu_quota: 5000,
                ..Default::default()
            },
        );
        assert_eq!(
            (
                cur.cpu_shares,
                cur.memory_limit_in_bytes,
                cur.cpu_quota,
                cur.cpuset_cpus.as_str()
            ),
            (2, 200, 5000, "0-1")
        );
    }
}
