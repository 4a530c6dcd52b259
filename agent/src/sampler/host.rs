//! Whole-VM figures (the agent side of `common::wire::host`): CPU, memory, physical disks,
//! network, and the inventory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procfs::{self, MemInfo, ReadBuf, StatSummary};
use super::rates;

/// Sector size of `/proc/diskstats` and `/sys/block/X/size`, whatever the device's own.
pub const SECTOR_BYTES: u64 = 512;

/// Cumulative counters of one device (a disk: sectors read/written; an interface: rx/tx bytes).
#[derive(Debug, Clone, Default)]
pub struct DevCounters {
    pub name: String,
    pub a: u64,
    pub b: u64,
}

/// Everything one tick reads from the VM-level files.
#[derive(Debug, Clone, Default)]
pub struct HostReading {
    pub uptime: Duration,
    pub stat: StatSummary,
    pub mem: MemInfo,
    /// Physical block devices only.
    pub disks: Vec<DevCounters>,
    /// All interfaces but `lo`.
    pub nets: Vec<DevCounters>,
}

/// Sum over devices present in both readings of their deltas. A device whose counter went
/// backwards contributes 0 (its delta restarts); a device that appeared or vanished between the
/// readings contributes nothing, so neither an attach nor a detach makes a spike.
pub fn summed_deltas(prev: &[DevCounters], cur: &[DevCounters]) -> (u64, u64) {
    let mut sum = (0u64, 0u64);
    for (i, c) in cur.iter().enumerate() {
        // Device order is stable between ticks, so the same index is nearly always the match.
        let p = match prev.get(i) {
            Some(p) if p.name == c.name => Some(p),
            _ => prev.iter().find(|p| p.name == c.name),
        };
        if let Some(p) = p {
            sum.0 = sum
                .0
                .saturating_add(rates::counter_delta(p.a, c.a).unwrap_or(0));
            sum.1 = sum
                .1
                .saturating_add(rates::counter_delta(p.b, c.b).unwrap_or(0));
        }
    }
    sum
}

/// Reuses `out`'s strings while overwriting it with `items`.
fn fill<'a>(out: &mut Vec<DevCounters>, items: impl Iterator<Item = (&'a str, u64, u64)>) {
    let mut n = 0;
    for (name, a, b) in items {
        if let Some(slot) = out.get_mut(n) {
            slot.name.clear();
            slot.name.push_str(name);
            slot.a = a;
            slot.b = b;
        } else {
            out.push(DevCounters {
                name: name.to_owned(),
                a,
                b,
            });
        }
        n += 1;
    }
    out.truncate(n);
}

/// Which block device names are physical disks.
///
/// A disk is physical when `/sys/block/NAME` exists **and** has a `device` link: that keeps
/// real (virtio, SCSI, NVMe, Xen…) disks and drops partitions (not in `/sys/block`), `loop`,
/// `ram`, `zram`, `dm-*` and `md*` (virtual, no `device`). Answers are cached per name, so a disk
/// hot-plugged later costs one `stat` the first time it is seen.
#[derive(Debug)]
pub struct DiskFilter {
    sys_block: PathBuf,
    known: HashMap<String, bool>,
}

impl DiskFilter {
    pub fn new(sys: &Path) -> Self {
        Self {
            sys_block: sys.join("block"),
            known: HashMap::new(),
        }
    }

    pub fn is_physical(&mut self, name: &str) -> bool {
        if let Some(&p) = self.known.get(name) {
            return p;
        }
        // /sys/block spells '/' in a device name (cciss/c0d0) as '!'.
        let dir = self.sys_block.join(name.replace('/', "!"));
        let physical = dir.join("device").exists();
        self.known.insert(name.to_owned(), physical);
        physical
    }
}

/// Paths of the VM-level files, built once.
#[derive(Debug)]
pub struct HostPaths {
    pub stat: PathBuf,
    pub meminfo: PathBuf,
    pub uptime: PathBuf,
    pub diskstats: PathBuf,
    pub net_dev: PathBuf,
}

impl HostPaths {
    pub fn new(proc: &Path) -> Self {
        Self {
            stat: proc.join("stat"),
            meminfo: proc.join("meminfo"),
            uptime: proc.join("uptime"),
            diskstats: proc.join("diskstats"),
            net_dev: proc.join("net/dev"),
        }
    }
}

/// Reads `/proc/diskstats` into `out` (physical disks only). A missing file (some containers)
/// leaves `out` empty: disk rates are then 0 rather than the sample failing.
pub fn read_disks(
    buf: &mut ReadBuf,
    path: &Path,
    filter: &mut DiskFilter,
    out: &mut Vec<DevCounters>,
) {
    let Ok(data) = buf.read_all(path) else {
        out.clear();
        return;
    };
    let items = procfs::diskstats(data).filter_map(|(name, r, w)| {
        let name = std::str::from_utf8(name).ok()?;
        filter.is_physical(name).then_some((name, r, w))
    });
    fill(out, items);
}

/// Reads `/proc/net/dev` into `out`, skipping `lo`. A missing file leaves `out` empty.
pub fn read_nets(buf: &mut ReadBuf, path: &Path, out: &mut Vec<DevCounters>) {
    let Ok(data) = buf.read_all(path) else {
        out.clear();
        return;
    };
    let items = procfs::net_dev(data).filter_map(|(name, rx, tx)| {
        let name = std::str::from_utf8(name).ok()?;
        (name != "lo").then_some((name, rx, tx))
    });
    fill(out, items);
}

/// KB/s of `(a, b)` summed deltas between two readings of device counters scaled by `unit`
/// bytes; `(0, 0)` without an elapsed time.
pub fn device_kib_per_sec(
    prev: &[DevCounters],
    cur: &[DevCounters],
    unit: u64,
    elapsed: Option<Duration>,
) -> (f64, f64) {
    let Some(elapsed) = elapsed else {
        return (0.0, 0.0);
    };
    let (a, b) = summed_deltas(prev, cur);
    (
        rates::kib_per_sec(0, a.saturating_mul(unit), elapsed),
        rates::kib_per_sec(0, b.saturating_mul(unit), elapsed),
    )
}

/// Sum of the physical block devices' sizes (`/sys/block/X/size` × 512), bytes.
pub fn disk_total_bytes(buf: &mut ReadBuf, sys: &Path) -> u64 {
    let block = sys.join("block");
    let Ok(dir) = std::fs::read_dir(&block) else {
        return 0;
    };
    let mut total = 0u64;
    for entry in dir.flatten() {
        let path = entry.path();
        if !path.join("device").exists() {
            continue;
        }
        if let Ok(data) = buf.read_all(&path.join("size")) {
            let sectors = procfs::parse_u64(data.trim_ascii()).unwrap_or(0);
            total = total.saturating_add(sectors.saturating_mul(SECTOR_BYTES));
        }
    }
    total
}

/// Sorts interface addresses into `(lan, wan)`, skipping loopback interfaces and addresses.
///
/// LAN: RFC 1918 (10/8, 172.16/12, 192.168/16) and IPv6 ULA (fc00::/7). WAN: globally routable
/// unicast only, so link-local, CGNAT (100.64/10), documentation, benchmarking, multicast and
/// reserved ranges are in neither list. Duplicates are dropped; order is kept.
pub fn classify_addresses<'a>(
    addrs: impl IntoIterator<Item = (&'a str, bool, IpAddr)>,
) -> (Vec<String>, Vec<String>) {
    let (mut lan, mut wan) = (Vec::new(), Vec::new());
    for (iface, loopback_iface, ip) in addrs {
        if loopback_iface || iface == "lo" || ip.is_loopback() {
            continue;
        }
        let list = if is_private(ip) {
            &mut lan
        } else if is_global(ip) {
            &mut wan
        } else {
            continue;
        };
        let s = ip.to_string();
        if !list.contains(&s) {
            list.push(s);
        }
    }
    (lan, wan)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
            let benchmarking = o[0] == 198 && (o[1] & 0xfe) == 18;
            let documentation = matches!(
                (o[0], o[1], o[2]),
                (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
            );
            let ietf = o[0] == 192 && o[1] == 0 && o[2] == 0;
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || o[0] >= 240
                || cgnat
                || benchmarking
                || documentation
                || ietf)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Global unicast is 2000::/3, minus documentation (2001:db8::/32).
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The local interfaces' `(name, interface is loopback, address)`; empty when the kernel will
/// not tell.
pub fn interface_addresses() -> Vec<(String, bool, IpAddr)> {
    if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .map(|i| {
                    let (lo, ip) = (i.is_loopback(), i.ip());
                    (i.name, lo, ip)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `PRETTY_NAME` from `/etc/os-release` (or `/usr/lib/os-release`), else `"Linux"`.
pub fn os_name() -> String {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| procfs::os_pretty_name(&t))
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

#[cfg(test)]
mod tests;
