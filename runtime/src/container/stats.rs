//! Container and pod statistics from real cgroup counters: CPU, memory, processes, the writable
//! layer's disk use and the pod's network traffic, as CRI `ContainerStats` and `PodSandboxStats`.
//!
//! - CPU: cumulative usage (v1 `cpuacct.usage`; v2 `cpu.stat` `usage_usec` × 1000) and
//!   `usage_nano_cores`, the rate since the previous sample of the same container or pod (kept in
//!   memory with its timestamp; absent on the first look).
//! - Memory: `usage` (v1 `memory.usage_in_bytes`, v2 `memory.current`), working set = usage −
//!   inactive file pages, RSS (v1 `total_rss`, v2 `anon`), page faults, and the bytes left under
//!   the limit when there is one. v1 reads the hierarchical `total_*` keys so a pod's cgroup counts
//!   its containers. Swap: v1 `memory.memsw.usage_in_bytes` − usage, v2 `memory.swap.current`.
//! - Writable layer: bytes (allocated blocks, hard links once) and inodes of the container's
//!   overlay upper directory, walked at most once per [`LAYER_CACHE_TTL`].
//! - Pod network: `/proc/net/dev` read from inside the pod's network namespace pin by a
//!   short-lived thread (no container process needed); the default interface is `eth0`.
//!
//! A pod without a cgroup of its own (systemd driver with no parent slice) gets the sum of its
//! containers'.

use crate::container::cgroups::{self, CgroupReader, CgroupVersion, Controller, keyed_value};
use crate::container::manager::ContainerManager;
use crate::container::store::{ContainerRecord, ContainerState};
use crate::sandbox::store::SandboxRecord;
use keelson_cri::v1::{
    ContainerAttributes, ContainerMetadata, ContainerStats, CpuUsage, FilesystemIdentifier,
    FilesystemUsage, LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxMetadata, PodSandboxStats, ProcessUsage, SwapUsage,
    UInt64Value,
};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a writable layer's measured size is reused before the directory is walked again.
pub const LAYER_CACHE_TTL: Duration = Duration::from_secs(5);

/// The interface CNI gives a pod (see the sandbox manager's attachment).
pub const POD_INTERFACE: &str = "eth0";

/// A v1 memory limit at or above this is "no limit" (the kernel shows PAGE_COUNTER_MAX pages).
const V1_UNLIMITED: u64 = 1 << 62;

/// What could not be measured; logged at debug level, the value is then left out.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{owner}: cannot read {file}: {source}")]
    Cgroup {
        owner: String,
        file: &'static str,
        source: io::Error,
    },
    #[error("container {id}: cannot measure the writable layer {dir}: {source}")]
    Layer {
        id: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("pod sandbox {id}: cannot read network counters in {netns}: {source}")]
    Network {
        id: String,
        netns: PathBuf,
        source: io::Error,
    },
}

/// Memory counters of one cgroup, in bytes (faults are counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNumbers {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// `None` when unlimited.
    pub limit: Option<u64>,
    /// Swap in use (`None` without swap accounting) and the swap allowed (`None`: unlimited).
    pub swap: Option<u64>,
    pub swap_limit: Option<u64>,
}

/// What one cgroup's files say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CgroupNumbers {
    pub cpu_usage_ns: Option<u64>,
    pub memory: Option<MemoryNumbers>,
    pub processes: Option<u64>,
}

impl CgroupNumbers {
    /// Sums another cgroup's counters into these (a pod made of its containers).
    pub fn add(&mut self, o: &CgroupNumbers) {
        fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            }
        }
        self.cpu_usage_ns = sum(self.cpu_usage_ns, o.cpu_usage_ns);
        self.processes = sum(self.processes, o.processes);
        self.memory = match (self.memory, o.memory) {
            (None, None) => None,
            (a, b) => {
                let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                Some(MemoryNumbers {
                    usage: a.usage + b.usage,
                    working_set: a.working_set + b.working_set,
                    rss: a.rss + b.rss,
                    page_faults: a.page_faults + b.page_faults,
                    major_page_faults: a.major_page_faults + b.major_page_faults,
                    // The sum of the containers' limits is not the pod's limit.
                    limit: None,
                    swap: sum(a.swap, b.swap),
                    swap_limit: None,
                })
            }
        };
    }
}

fn read_u64(
    r: &dyn CgroupReader,
    owner: &str,
    ctrl: Controller,
    cg: &Path,
    file: &'static str,
) -> Result<String, StatsError> {
    r.read(ctrl, cg, file)
        .map(|s| s.trim().to_string())
        .map_err(|source| StatsError::Cgroup {
            owner: owner.to_string(),
            file,
            source,
        })
}

fn parse_num(owner: &str, file: &'static str, s: &str) -> Result<u64, StatsError> {
    s.parse().map_err(|_| StatsError::Cgroup {
        owner: owner.to_string(),
        file,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{s:?} is not a number")),
    })
}

fn read_cpu(r: &dyn CgroupReader, owner: &str, cg: &Path) -> Result<u64, StatsError> {
    match r.version() {
        CgroupVersion::V1 => {
            let s = read_u64(r, owner, Controller::Cpuacct, cg, "cpuacct.usage")?;
            parse_num(owner, "cpuacct.usage", &s)
        }
        CgroupVersion::V2 => {
            let s = read_u64(r, owner, Controller::Cpu, cg, "cpu.stat")?;
            keyed_value(&s, "usage_usec")
                .map(|us| us * 1000)
                .ok_or_else(|| StatsError::Cgroup {
                    owner: owner.to_string(),
                    file: "cpu.stat",
                    source: io::Error::new(io::ErrorKind::InvalidData, "no usage_usec"),
                })
        }
    }
}

fn read_memory(r: &dyn CgroupReader, owner: &str, cg: &Path) -> Result<MemoryNumbers, StatsError> {
    let m = Controller::Memory;
    let (usage_file, limit_file, keys) = match r.version() {
        CgroupVersion::V1 => (
            "memory.usage_in_bytes",
            "memory.limit_in_bytes",
            [
                "total_inactive_file",
                "total_rss",
                "total_pgfault",
                "total_pgmajfault",
            ],
        ),
        CgroupVersion::V2 => (
            "memory.current",
            "memory.max",
            ["inactive_file", "anon", "pgfault", "pgmajfault"],
        ),
    };
    let usage = parse_num(owner, usage_file, &read_u64(r, owner, m, cg, usage_file)?)?;
    let stat = read_u64(r, owner, m, cg, "memory.stat")?;
    let [inactive, rss, faults, major] = keys.map(|k| keyed_value(&stat, k).unwrap_or(0));
    let number = |file: &'static str| {
        read_u64(r, owner, m, cg, file)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    let limit = number(limit_file).filter(|l| *l < V1_UNLIMITED);
    let (swap, swap_limit) = match r.version() {
        // v1 counts memory+swap: swap is the difference, its room what the two limits leave.
        CgroupVersion::V1 => (
            number("memory.memsw.usage_in_bytes").map(|t| t.saturating_sub(usage)),
            number("memory.memsw.limit_in_bytes")
                .filter(|l| *l < V1_UNLIMITED)
                .map(|l| l.saturating_sub(limit.unwrap_or(0))),
        ),
        CgroupVersion::V2 => (number("memory.swap.current"), number("memory.swap.max")),
    };
    Ok(MemoryNumbers {
        usage,
        working_set: usage.saturating_sub(inactive),
        rss,
        page_faults: faults,
        major_page_faults: major,
        limit,
        swap,
        swap_limit,
    })
}

/// Reads what there is of CPU, memory and process counters for `cg`; a missing part is logged
/// and left `None` (the cgroup is going away, or a controller is not enabled).
pub fn read_numbers(r: &dyn CgroupReader, owner: &str, cg: &Path) -> CgroupNumbers {
    let keep = |res: Result<u64, StatsError>| {
        res.map_err(|e| tracing::debug!(error = %e, "cgroup counter unavailable"))
            .ok()
    };
    let memory = read_memory(r, owner, cg)
        .map_err(|e| tracing::debug!(error = %e, "cgroup memory counters unavailable"))
        .ok();
    let processes = read_u64(r, owner, Controller::Pids, cg, "pids.current")
        .and_then(|s| parse_num(owner, "pids.current", &s));
    CgroupNumbers {
        cpu_usage_ns: keep(read_cpu(r, owner, cg)),
        memory,
        processes: keep(processes),
    }
}

/// Bytes (allocated blocks, each inode once) and inodes under a directory, like `du`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks `dir` without following symlinks or leaving its file system.
pub fn disk_usage(dir: &Path) -> io::Result<DiskUsage> {
    let root = std::fs::symlink_metadata(dir)?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut usage = DiskUsage::default();
    let mut stack = vec![(dir.to_path_buf(), root)];
    while let Some((path, meta)) = stack.pop() {
        if seen.insert((meta.dev(), meta.ino())) {
            usage.bytes += meta.blocks() * 512;
            usage.inodes += 1;
        }
        if !meta.is_dir() || meta.dev() != dev {
            continue;
        }
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            // Removed while we walk: what is gone uses nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            match entry.metadata() {
                Ok(m) => stack.push((entry.path(), m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(usage)
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of a `/proc/net/dev` text, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (name != "lo" && f.len() >= 11).then(|| InterfaceCounters {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// `/proc/net/dev` as seen from inside the network namespace pinned at `netns`. A fresh thread
/// enters it and ends, so no thread of the daemon is left in a pod's namespace.
pub fn read_net_dev_in(netns: &Path) -> io::Result<String> {
    let ns = std::fs::File::open(netns)?;
    std::thread::Builder::new()
        .name("netns-stats".into())
        .spawn(move || -> io::Result<String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            // /proc/self/net shows the main thread's namespace; thread-self shows ours.
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })?
        .join()
        .map_err(|_| io::Error::other("the netns reader thread panicked"))?
}

fn u64v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The CRI memory block for `m` read at `at`.
pub fn memory_usage(m: &MemoryNumbers, at: i64) -> MemoryUsage {
    MemoryUsage {
        timestamp: at,
        working_set_bytes: u64v(m.working_set),
        available_bytes: m.limit.map(|l| UInt64Value {
            value: l.saturating_sub(m.working_set),
        }),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: None,
    }
}

/// The CRI swap block, when swap is accounted.
pub fn swap_usage(m: &MemoryNumbers, at: i64) -> Option<SwapUsage> {
    let used = m.swap?;
    Some(SwapUsage {
        timestamp: at,
        swap_available_bytes: m.swap_limit.map(|l| UInt64Value {
            value: l.saturating_sub(used),
        }),
        swap_usage_bytes: u64v(used),
    })
}

/// A CPU sample: cumulative usage and when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    usage_ns: u64,
    at: i64,
}

/// Where a container's numbers come from.
#[derive(Debug, Clone)]
pub struct ContainerSource {
    /// Its cgroup, relative to the hierarchy root; `None` when it has none (not created, exited).
    pub cgroup: Option<PathBuf>,
    /// The overlay upper directory (its writable layer).
    pub upper: PathBuf,
}

/// Turns counters into CRI stats; remembers the previous CPU sample of each container and pod,
/// measured writable layers and resolved cgroup paths.
pub struct StatsCollector {
    cgroups: Arc<dyn cgroups::CgroupWriter>,
    fs_mountpoint: String,
    layer_ttl: Duration,
    cpu: Mutex<HashMap<String, CpuSample>>,
    layers: Mutex<HashMap<String, (Instant, DiskUsage)>>,
    paths: Mutex<HashMap<String, PathBuf>>,
}

impl StatsCollector {
    /// `fs_mountpoint` identifies the file system writable layers live on (as ImageFsInfo's).
    pub fn new(cgroups: Arc<dyn cgroups::CgroupWriter>, fs_mountpoint: String) -> Self {
        Self {
            cgroups,
            fs_mountpoint,
            layer_ttl: LAYER_CACHE_TTL,
            cpu: Mutex::default(),
            layers: Mutex::default(),
            paths: Mutex::default(),
        }
    }

    /// The host's cgroups under `/sys/fs/cgroup`.
    pub fn host(fs_mountpoint: String) -> Self {
        Self::new(
            Arc::new(cgroups::HostCgroups::detect(Path::new("/sys/fs/cgroup"))),
            fs_mountpoint,
        )
    }

    pub fn cgroups(&self) -> &dyn cgroups::CgroupWriter {
        self.cgroups.as_ref()
    }

    /// The CRI CPU block; `usage_nano_cores` is the rate since this key's previous sample.
    pub fn cpu_usage(&self, key: &str, usage_ns: u64, at: i64) -> CpuUsage {
        let mut samples = self.cpu.lock().expect("cpu samples");
        let now = CpuSample { usage_ns, at };
        let rate = samples.insert(key.to_string(), now).and_then(|prev| {
            let dt = u64::try_from(at - prev.at).ok().filter(|d| *d > 0)?;
            let used = usage_ns.checked_sub(prev.usage_ns)?;
            Some((used as u128 * 1_000_000_000 / dt as u128) as u64)
        });
        CpuUsage {
            timestamp: at,
            usage_core_nano_seconds: u64v(usage_ns),
            usage_nano_cores: rate.map(|value| UInt64Value { value }),
            psi: None,
        }
    }

    /// The writable layer's usage, measured at most once per TTL.
    pub fn writable_layer(&self, id: &str, upper: &Path, at: i64) -> FilesystemUsage {
        let cached = self
            .layers
            .lock()
            .expect("layer cache")
            .get(id)
            .filter(|(when, _)| when.elapsed() < self.layer_ttl)
            .map(|(_, u)| *u);
        let usage = cached.or_else(|| match disk_usage(upper) {
            Ok(u) => {
                self.layers
                    .lock()
                    .expect("layer cache")
                    .insert(id.to_string(), (Instant::now(), u));
                Some(u)
            }
            Err(source) => {
                let e = StatsError::Layer {
                    id: id.to_string(),
                    dir: upper.to_owned(),
                    source,
                };
                tracing::debug!(error = %e, "writable layer not measured");
                None
            }
        });
        FilesystemUsage {
            timestamp: at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self.fs_mountpoint.clone(),
            }),
            used_bytes: usage.map(|u| UInt64Value { value: u.bytes }),
            inodes_used: usage.map(|u| UInt64Value { value: u.inodes }),
        }
    }

    /// Stats of one container from explicit sources, with its raw counters for pod sums.
    pub fn container_from(
        &self,
        r: &ContainerRecord,
        src: &ContainerSource,
    ) -> (ContainerStats, CgroupNumbers) {
        let at = now_nanos();
        let owner = format!("container {}", r.id);
        let numbers = match &src.cgroup {
            Some(cg) => read_numbers(self.cgroups.as_ref(), &owner, cg),
            None => CgroupNumbers::default(),
        };
        let stats = ContainerStats {
            attributes: Some(ContainerAttributes {
                id: r.id.clone(),
                metadata: Some(ContainerMetadata {
                    name: r.name.clone(),
                    attempt: r.attempt,
                }),
                labels: r.labels.clone().into_iter().collect(),
                annotations: r.annotations.clone().into_iter().collect(),
            }),
            cpu: numbers.cpu_usage_ns.map(|ns| self.cpu_usage(&r.id, ns, at)),
            memory: numbers.memory.map(|m| memory_usage(&m, at)),
            writable_layer: Some(self.writable_layer(&r.id, &src.upper, at)),
            swap: numbers.memory.and_then(|m| swap_usage(&m, at)),
            io: None,
        };
        (stats, numbers)
    }

    /// Where `r`'s counters are: its cgroup (while created or running) and its upper directory.
    pub fn source_of(&self, m: &ContainerManager, r: &ContainerRecord) -> ContainerSource {
        let upper = m.store.dir_of(&r.id).join("upper");
        let cgroup = if matches!(r.state, ContainerState::Created | ContainerState::Running) {
            self.cgroup_of(m, &r.id)
        } else {
            None
        };
        ContainerSource { cgroup, upper }
    }

    /// The container's cgroup, resolved once from its bundle's `linux.cgroupsPath`.
    pub fn cgroup_of(&self, m: &ContainerManager, id: &str) -> Option<PathBuf> {
        if let Some(p) = self.paths.lock().expect("cgroup paths").get(id) {
            return Some(p.clone());
        }
        let path = m.cgroups_path(id)?;
        let found = cgroups::resolve(
            self.cgroups.as_ref(),
            &cgroups::container_cgroup_candidates(&path),
        )?;
        self.paths
            .lock()
            .expect("cgroup paths")
            .insert(id.to_string(), found.clone());
        Some(found)
    }

    /// ContainerStats for one container.
    pub fn container(&self, m: &ContainerManager, r: &ContainerRecord) -> ContainerStats {
        self.container_from(r, &self.source_of(m, r)).0
    }

    /// PodSandboxStats: the pod's cgroup (or the sum of its containers'), its containers, its
    /// network and process count.
    pub fn pod(
        &self,
        m: &ContainerManager,
        s: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> PodSandboxStats {
        let sources: Vec<_> = containers.iter().map(|r| self.source_of(m, r)).collect();
        let cgroup = cgroups::resolve(
            self.cgroups.as_ref(),
            &cgroups::pod_cgroup_candidates(&s.cgroup_parent, &s.id),
        );
        let netns = (!s.host_network).then(|| s.netns.clone()).flatten();
        self.pod_from(s, containers, &sources, cgroup.as_deref(), netns.as_deref())
    }

    /// PodSandboxStats from explicit sources.
    pub fn pod_from(
        &self,
        s: &SandboxRecord,
        containers: &[ContainerRecord],
        sources: &[ContainerSource],
        cgroup: Option<&Path>,
        netns: Option<&Path>,
    ) -> PodSandboxStats {
        let mut sum = CgroupNumbers::default();
        let mut container_stats = Vec::new();
        for (r, src) in containers.iter().zip(sources) {
            let (stats, numbers) = self.container_from(r, src);
            sum.add(&numbers);
            container_stats.push(stats);
        }
        let at = now_nanos();
        let owner = format!("pod sandbox {}", s.id);
        let numbers = match cgroup {
            Some(cg) => read_numbers(self.cgroups.as_ref(), &owner, cg),
            None => sum,
        };
        let network = netns.and_then(|ns| match read_net_dev_in(ns) {
            Ok(text) => Some(network_usage(&parse_net_dev(&text), at)),
            Err(source) => {
                let e = StatsError::Network {
                    id: s.id.clone(),
                    netns: ns.to_owned(),
                    source,
                };
                tracing::debug!(error = %e, "pod network not measured");
                None
            }
        });
        PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: s.id.clone(),
                metadata: Some(PodSandboxMetadata {
                    name: s.name.clone(),
                    uid: s.uid.clone(),
                    namespace: s.namespace.clone(),
                    attempt: s.attempt,
                }),
                labels: s.labels.clone().into_iter().collect(),
                annotations: s.annotations.clone().into_iter().collect(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: numbers
                    .cpu_usage_ns
                    .map(|ns| self.cpu_usage(&format!("pod/{}", s.id), ns, at)),
                memory: numbers.memory.map(|m| memory_usage(&m, at)),
                network,
                process: numbers.processes.map(|n| ProcessUsage {
                    timestamp: at,
                    process_count: u64v(n),
                }),
                containers: container_stats,
                io: None,
            }),
            windows: None,
        }
    }

    /// Drops remembered samples, layer sizes and paths of containers and pods not in `live`.
    pub fn retain(&self, live_containers: &HashSet<String>, live_pods: &HashSet<String>) {
        let keep = |k: &String| {
            live_containers.contains(k)
                || k.strip_prefix("pod/")
                    .is_some_and(|p| live_pods.contains(p))
        };
        self.cpu.lock().expect("cpu samples").retain(|k, _| keep(k));
        self.layers
            .lock()
            .expect("layer cache")
            .retain(|k, _| live_containers.contains(k));
        self.paths
            .lock()
            .expect("cgroup paths")
            .retain(|k, _| live_containers.contains(k));
    }
}

/// The CRI network block: `eth0` as the default interface, every other non-loopback one listed.
pub fn network_usage(ifaces: &[InterfaceCounters], at: i64) -> NetworkUsage {
    let cri = |i: &InterfaceCounters| NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    };
    NetworkUsage {
        timestamp: at,
        default_interface: ifaces.iter().find(|i| i.name == POD_INTERFACE).map(cri),
        interfaces: ifaces
            .iter()
            .filter(|i| i.name != POD_INTERFACE)
            .map(cri)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroups::FakeCgroups;
    use crate::container::store::CONTAINER_RECORD_VERSION;
    use crate::image::digest::Digest;
    use std::collections::BTreeMap;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.into(),
            sandbox_id: "s1".into(),
            name: format!("name-{id}"),
            attempt: 1,
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            annotations: BTreeMap::new(),
            image: "busybox".into(),
            image_id: Digest::of(b"cfg"),
            chain_ids: vec![],
            config_pb: String::new(),
            state: ContainerState::Running,
            created_at: 1,
            started_at: 2,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: None,
            stop_signal: None,
            rootfs: None,
            shim_launched: true,
            cgroups_path: None,
        }
    }

    fn sandbox() -> SandboxRecord {
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": "s1", "name": "pod", "namespace": "ns", "uid": "u1",
            "attempt": 0, "created_at": 1, "state": "Ready", "config_pb": "",
            "hostname": "pod", "host_network": false, "host_ipc": false, "host_pid": false,
            "cgroup_parent": "",
        }))
        .unwrap()
    }

    fn v1_container(fake: &FakeCgroups, cg: &str, cpu_ns: u64, usage: u64) {
        fake.put(
            Controller::Cpuacct,
            cg,
            "cpuacct.usage",
            &format!("{cpu_ns}\n"),
        );
        fake.put(
            Controller::Memory,
            cg,
            "memory.usage_in_bytes",
            &format!("{usage}\n"),
        );
        fake.put(
            Controller::Memory,
            cg,
            "memory.limit_in_bytes",
            "67108864\n",
        );
        fake.put(
            Controller::Memory,
            cg,
            "memory.stat",
            "cache 100\nrss 5\ninactive_file 1\ntotal_cache 4096\ntotal_rss 8192\n\
             total_inactive_file 1024\ntotal_pgfault 77\ntotal_pgmajfault 3\n",
        );
        fake.put(Controller::Pids, cg, "pids.current", "2\n");
        fake.put(
            Controller::Memory,
            cg,
            "memory.memsw.usage_in_bytes",
            &format!("{}\n", usage + 512),
        );
        fake.put(
            Controller::Memory,
            cg,
            "memory.memsw.limit_in_bytes",
            "67108864\n",
        );
    }

    #[test]
    fn v1_numbers_come_from_hierarchical_keys() {
        let fake = FakeCgroups::new(CgroupVersion::V1);
        v1_container(&fake, "keelson/pod-s1/c1", 5_000_000, 20_480);
        let n = read_numbers(&fake, "container c1", Path::new("keelson/pod-s1/c1"));
        assert_eq!(n.cpu_usage_ns, Some(5_000_000));
        assert_eq!(n.processes, Some(2));
        assert_eq!(
            n.memory.unwrap(),
            MemoryNumbers {
                usage: 20_480,
                working_set: 19_456,
                rss: 8192,
                page_faults: 77,
                major_page_faults: 3,
                limit: Some(67_108_864),
                swap: Some(512),
                swap_limit: Some(0),
            }
        );
        let swap = swap_usage(&n.memory.unwrap(), 1).unwrap();
        assert_eq!(swap.swap_usage_bytes.unwrap().value, 512);
        assert_eq!(swap.swap_available_bytes.unwrap().value, 0);
        let unlimited = FakeCgroups::new(CgroupVersion::V1);
        v1_container(&unlimited, "c", 1, 1);
        unlimited.put(
            Controller::Memory,
            "c",
            "memory.limit_in_bytes",
            "9223372036854771712",
        );
        let n = read_numbers(&unlimited, "container c", Path::new("c"));
        assert_eq!(n.memory.unwrap().limit, None);
        assert!(
            memory_usage(&n.memory.unwrap(), 0)
                .available_bytes
                .is_none()
        );
    }

    #[test]
    fn v2_numbers_come_from_unified_files() {
        let fake = FakeCgroups::new(CgroupVersion::V2);
        let cg = "kubepods.slice/keelson-c1.scope";
        fake.put(
            Controller::Cpu,
            cg,
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        fake.put(Controller::Memory, cg, "memory.current", "300000\n");
        fake.put(Controller::Memory, cg, "memory.max", "max\n");
        fake.put(
            Controller::Memory,
            cg,
            "memory.stat",
            "anon 120000\nfile 150000\ninactive_file 100000\npgfault 9\npgmajfault 1\n",
        );
        fake.put(Controller::Pids, cg, "pids.current", "4\n");
        fake.put(Controller::Memory, cg, "memory.swap.current", "4096\n");
        fake.put(Controller::Memory, cg, "memory.swap.max", "max\n");
        let n = read_numbers(&fake, "container c1", Path::new(cg));
        let swap = swap_usage(&n.memory.unwrap(), 1).unwrap();
        assert_eq!(swap.swap_usage_bytes.unwrap().value, 4096);
        assert!(swap.swap_available_bytes.is_none(), "unlimited swap");
        assert_eq!(n.cpu_usage_ns, Some(1_500_000));
        let m = n.memory.unwrap();
        assert_eq!(
            (
                m.usage,
                m.working_set,
                m.rss,
                m.page_faults,
                m.major_page_faults,
                m.limit
            ),
            (300_000, 200_000, 120_000, 9, 1, None)
        );
        fake.put(Controller::Memory, cg, "memory.max", "262144\n");
        let m = read_numbers(&fake, "container c1", Path::new(cg))
            .memory
            .unwrap();
        let cri = memory_usage(&m, 7);
        assert_eq!(cri.available_bytes.unwrap().value, 62_144);
        assert_eq!(cri.working_set_bytes.unwrap().value, 200_000);
    }

    #[test]
    fn a_missing_cgroup_gives_no_numbers() {
        let fake = FakeCgroups::new(CgroupVersion::V2);
        assert_eq!(
            read_numbers(&fake, "container gone", Path::new("gone")),
            CgroupNumbers::default()
        );
    }

    #[test]
    fn nano_cores_are_the_rate_since_the_previous_sample() {
        let c = StatsCollector::new(
            Arc::new(FakeCgroups::new(CgroupVersion::V1)),
            "/var/lib/keelson".into(),
        );
        let first = c.cpu_usage("c1", 1_000_000_000, 10_000_000_000);
        assert!(first.usage_nano_cores.is_none(), "no rate from one sample");
        // Half a core for two seconds.
        let second = c.cpu_usage("c1", 2_000_000_000, 12_000_000_000);
        assert_eq!(second.usage_nano_cores.unwrap().value, 500_000_000);
        assert_eq!(second.usage_core_nano_seconds.unwrap().value, 2_000_000_000);
        // A counter that went back (a new cgroup under the same key) gives no rate.
        assert!(
            c.cpu_usage("c1", 5, 13_000_000_000)
                .usage_nano_cores
                .is_none()
        );
        let live = HashSet::new();
        c.retain(&live, &live);
        assert!(
            c.cpu_usage("c1", 10, 14_000_000_000)
                .usage_nano_cores
                .is_none()
        );
    }

    #[test]
    fn container_stats_carry_attributes_cgroup_numbers_and_the_layer() {
        let fake = Arc::new(FakeCgroups::new(CgroupVersion::V1));
        v1_container(&fake, "keelson/pod-s1/c1", 42, 4096);
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/hello"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(upper.join("etc/hello"), upper.join("hello-again")).unwrap();
        let c = StatsCollector::new(fake, "/var/lib/keelson".into());
        let src = ContainerSource {
            cgroup: Some(PathBuf::from("keelson/pod-s1/c1")),
            upper: upper.clone(),
        };
        let (s, _) = c.container_from(&record("c1"), &src);
        let a = s.attributes.unwrap();
        assert_eq!(
            (a.id.as_str(), a.metadata.unwrap().name.as_str()),
            ("c1", "name-c1")
        );
        assert_eq!(a.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.cpu.unwrap().usage_core_nano_seconds.unwrap().value, 42);
        assert_eq!(s.memory.unwrap().working_set_bytes.unwrap().value, 3072);
        let layer = s.writable_layer.unwrap();
        assert_eq!(layer.fs_id.unwrap().mountpoint, "/var/lib/keelson");
        // upper, etc, one file with two names.
        assert_eq!(layer.inodes_used.unwrap().value, 3);
        assert!(layer.used_bytes.unwrap().value >= 10_000);

        // Cached: a new file shows up only after the TTL.
        std::fs::write(upper.join("more"), b"x").unwrap();
        let (s, _) = c.container_from(&record("c1"), &src);
        assert_eq!(s.writable_layer.unwrap().inodes_used.unwrap().value, 3);

        // An exited container: no cgroup, the layer still counts.
        let mut gone = record("c1");
        gone.state = ContainerState::Exited;
        let (s, n) = c.container_from(
            &gone,
            &ContainerSource {
                cgroup: None,
                upper,
            },
        );
        assert!(s.cpu.is_none() && s.memory.is_none() && s.writable_layer.is_some());
        assert_eq!(n, CgroupNumbers::default());
    }

    #[test]
    fn pod_stats_use_the_pod_cgroup_or_sum_the_containers() {
        let fake = Arc::new(FakeCgroups::new(CgroupVersion::V1));
        v1_container(&fake, "keelson/pod-s1/c1", 100, 4096);
        v1_container(&fake, "keelson/pod-s1/c2", 50, 2048);
        v1_container(&fake, "keelson/pod-s1", 1000, 10_000);
        let dir = tempfile::tempdir().unwrap();
        let c = StatsCollector::new(fake, "/var/lib/keelson".into());
        let containers = [record("c1"), record("c2")];
        let sources: Vec<_> = ["c1", "c2"]
            .iter()
            .map(|id| ContainerSource {
                cgroup: Some(PathBuf::from(format!("keelson/pod-s1/{id}"))),
                upper: dir.path().join(id),
            })
            .collect();
        let s = c.pod_from(
            &sandbox(),
            &containers,
            &sources,
            Some(Path::new("keelson/pod-s1")),
            None,
        );
        let attrs = s.attributes.unwrap();
        assert_eq!(
            (
                attrs.id.as_str(),
                attrs.metadata.unwrap().namespace.as_str()
            ),
            ("s1", "ns")
        );
        let l = s.linux.unwrap();
        assert_eq!(l.cpu.unwrap().usage_core_nano_seconds.unwrap().value, 1000);
        assert_eq!(l.memory.unwrap().usage_bytes.unwrap().value, 10_000);
        assert_eq!(l.process.unwrap().process_count.unwrap().value, 2);
        assert_eq!(l.containers.len(), 2);
        assert!(l.network.is_none());

        let summed = c.pod_from(&sandbox(), &containers, &sources, None, None);
        let l = summed.linux.unwrap();
        assert_eq!(l.cpu.unwrap().usage_core_nano_seconds.unwrap().value, 150);
        let mem = l.memory.unwrap();
        assert_eq!(mem.usage_bytes.unwrap().value, 6144);
        assert!(mem.available_bytes.is_none(), "no pod limit from a sum");
        assert_eq!(l.process.unwrap().process_count.unwrap().value, 4);
    }

    #[test]
    fn net_dev_is_parsed_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0\n  \
 eth0:    5230      41    1    0    0     0          0         0     1762      19    2    0    0     0       0          0\n";
        let ifaces = parse_net_dev(text);
        assert_eq!(
            ifaces,
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5230,
                rx_errors: 1,
                tx_bytes: 1762,
                tx_errors: 2,
            }]
        );
        let n = network_usage(&ifaces, 5);
        assert_eq!(n.default_interface.unwrap().rx_bytes.unwrap().value, 5230);
        assert!(n.interfaces.is_empty());
    }

    #[test]
    fn host_network_namespace_is_readable_from_a_thread() {
        // The daemon's own namespace stands in for a pod's pin.
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let text = read_net_dev_in(Path::new("/proc/self/ns/net")).unwrap();
        assert!(text.contains("lo:"), "{text}");
    }

    /// A real cgroup (root only): a child shell moves itself in, burns a little CPU and execs
    /// `sleep`; its counters are read, then a memory limit and CPU shares are applied and read back.
    #[test]
    fn real_cgroup_counts_and_takes_limits() {
        use crate::container::cgroups::{CgroupWriter, HostCgroups, apply_resources};
        use keelson_cri::v1::LinuxContainerResources;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let host = HostCgroups::detect(Path::new("/sys/fs/cgroup"));
        let rel = PathBuf::from(format!("keelson-test-{}", std::process::id()));
        let ctrls: &[Controller] = match host.version() {
            CgroupVersion::V1 => &[
                Controller::Memory,
                Controller::Cpuacct,
                Controller::Cpu,
                Controller::Pids,
            ],
            CgroupVersion::V2 => &[Controller::Memory],
        };
        struct Cleanup(Vec<PathBuf>, Option<std::process::Child>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                if let Some(mut child) = self.1.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                for d in &self.0 {
                    for _ in 0..50 {
                        if std::fs::remove_dir(d).is_ok() || !d.exists() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let mut guard = Cleanup(Vec::new(), None);
        let mut procs = Vec::new();
        for c in ctrls {
            let dir = host.dir(*c, &rel);
            if let Err(e) = std::fs::create_dir(&dir) {
                eprintln!("skipped: cannot create {}: {e}", dir.display());
                return;
            }
            guard.0.push(dir.clone());
            procs.push(dir.join("cgroup.procs"));
        }
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "for f in \"$@\"; do echo $$ > \"$f\" || exit 1; done; \
                 i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30",
            )
            .arg("sh")
            .args(&procs)
            .spawn()
            .unwrap();
        guard.1 = Some(child);

        let owner = "container keelson-test";
        let deadline = Instant::now() + Duration::from_secs(10);
        let n = loop {
            let n = read_numbers(&host, owner, &rel);
            let ready = n.cpu_usage_ns.unwrap_or(0) > 0
                && n.memory.is_some_and(|m| m.usage > 0)
                && std::fs::read_to_string(format!(
                    "/proc/{}/comm",
                    guard.1.as_ref().unwrap().id()
                ))
                .is_ok_and(|c| c.trim() == "sleep");
            if ready || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(n.cpu_usage_ns.unwrap_or(0) > 0, "{n:?}");
        let m = n.memory.expect("memory counters");
        assert!(m.usage > 0 && m.working_set <= m.usage, "{m:?}");
        assert_eq!(m.limit, None, "a new cgroup has no limit");
        if host.version() == CgroupVersion::V1 {
            assert_eq!(n.processes, Some(1), "{n:?}");
        }

        let update = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        };
        apply_resources(&host, owner, &rel, &update).unwrap();
        let (limit_file, cpu_file, cpu_value) = match host.version() {
            CgroupVersion::V1 => ("memory.limit_in_bytes", "cpu.shares", "512"),
            CgroupVersion::V2 => ("memory.max", "cpu.weight", "20"),
        };
        let read = |ctrl, f| host.read(ctrl, &rel, f).unwrap().trim().to_string();
        assert_eq!(read(Controller::Memory, limit_file), "67108864");
        if host.version() == CgroupVersion::V1 {
            assert_eq!(read(Controller::Cpu, cpu_file), cpu_value);
        }
        let m = read_numbers(&host, owner, &rel).memory.unwrap();
        assert_eq!(m.limit, Some(64 << 20));

        // Below what it uses: v1's kernel refuses after trying to reclaim (unless it can swap);
        // on v2 the update refuses before the kernel would OOM-kill.
        let no_swap =
            std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() <= 1);
        let too_low = LinuxContainerResources {
            memory_limit_in_bytes: 4096,
            ..Default::default()
        };
        match apply_resources(&host, owner, &rel, &too_low) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("container keelson-test:"), "{msg}");
                eprintln!("refused as expected: {msg}");
            }
            Ok(()) => assert!(!no_swap, "a 4 KiB limit on a running shell was accepted"),
        }
        let _ = host.write(
            Controller::Memory,
            &rel,
            limit_file,
            if host.version() == CgroupVersion::V1 {
                "-1"
            } else {
                "max"
            },
        );
    }
}
