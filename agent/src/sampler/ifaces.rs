//! Which interfaces are the VM's own, and the agent's running byte totals over them.
//!
//! **Which interfaces count.** A packet forwarded for a container crosses a veth, a bridge and
//! the uplink: summing every interface counts it once per hop. By default only interfaces
//! backed by a device count: `/sys/class/net/NAME` links into `/sys/devices/...` and not into
//! `/sys/devices/virtual/net/` (where the kernel registers devices without a parent:
//! `net/core/net-sysfs.c` `netdev_register_kobject` → `get_device_parent`; veth, bridge, VLAN,
//! bond, tun/tap, wireguard, dummy, `lo`). Glob lists change that: a non-empty `include` list
//! replaces the default rule, `exclude` removes names either way. Counters come from
//! `/proc/net/dev` (`net/core/net-procfs.c` `dev_seq_printf_stats`).
//!
//! **Running totals.** `rx_bytes`/`tx_bytes` on the wire are the agent's own sums of
//! per-interface deltas, not the sum of the kernel's counters: an interface that appears
//! (moved into the namespace with its counters, `ip link set … netns`) adds nothing, one that
//! vanishes (`docker stop` deletes a veth) takes nothing away, a rename (same ifindex) carries
//! on. A counter that goes backwards restarts its delta. The totals and each interface's last
//! counters are persisted ([`NetState`]), so an agent restarted within the same boot adds the
//! traffic of its downtime; after a reboot the counted interfaces' counters (since boot) are
//! added once, so the totals never go backwards. With no saved state at all (first start, or an
//! upgrade from an agent that sent the plain sum) the totals start at the sum of every
//! interface's counters but `lo`, so they continue that sum instead of dropping below it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host::DevCounters;
use super::procfs::{self, ReadBuf};

/// A shell-style glob over interface names: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

/// A glob that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad interface glob {0:?}: empty, or an unclosed `[`")]
pub struct GlobError(pub String);

impl Glob {
    /// Checks and keeps `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let b = pattern.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'[' {
                match class_end(b, i) {
                    Some(end) => i = end,
                    None => return Err(GlobError(pattern.to_owned())),
                }
            }
            i += 1;
        }
        if pattern.is_empty() {
            return Err(GlobError(pattern.to_owned()));
        }
        Ok(Glob(pattern.to_owned()))
    }

    /// Whether `name` matches the whole pattern.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Index of the `]` closing the class opened at `open`.
fn class_end(p: &[u8], open: usize) -> Option<usize> {
    let mut j = open + 1;
    if p.get(j) == Some(&b'!') {
        j += 1;
    }
    // A `]` right after `[` or `[!` is a member.
    if p.get(j) == Some(&b']') {
        j += 1;
    }
    while j < p.len() {
        if p[j] == b']' {
            return Some(j);
        }
        j += 1;
    }
    None
}

fn class_matches(class: &[u8], c: u8) -> bool {
    let (negate, class) = match class.split_first() {
        Some((b'!', rest)) => (true, rest),
        _ => (false, class),
    };
    let mut hit = false;
    let mut k = 0;
    while k < class.len() {
        if k + 2 < class.len() && class[k + 1] == b'-' {
            hit |= (class[k]..=class[k + 2]).contains(&c);
            k += 3;
        } else {
            hit |= class[k] == c;
            k += 1;
        }
    }
    hit != negate
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*` (linear in practice).
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => class_end(p, pi)
                .filter(|&end| class_matches(&p[pi + 1..end], s[si]))
                .map(|end| end + 1),
            Some(&c) => (c == s[si]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                si += 1;
            }
            (None, Some((sp, ss))) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The rule that picks the VM's own interfaces (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSelector {
    /// Non-empty: only these names count (replaces the device rule).
    pub include: Vec<Glob>,
    /// These names never count.
    pub exclude: Vec<Glob>,
}

impl NetSelector {
    /// From config strings; every bad pattern is reported.
    pub fn new(include: &[String], exclude: &[String]) -> Result<NetSelector, Vec<GlobError>> {
        let mut errors = Vec::new();
        let mut compile = |list: &[String]| -> Vec<Glob> {
            list.iter()
                .filter_map(|p| Glob::new(p).map_err(|e| errors.push(e)).ok())
                .collect()
        };
        let selector = NetSelector {
            include: compile(include),
            exclude: compile(exclude),
        };
        if errors.is_empty() {
            Ok(selector)
        } else {
            Err(errors)
        }
    }

    /// Whether `name` counts; `backed_by_device` is only asked when the default rule applies.
    pub fn counts(&self, name: &str, backed_by_device: impl FnOnce() -> bool) -> bool {
        if name == "lo" || self.exclude.iter().any(|g| g.matches(name)) {
            return false;
        }
        if self.include.is_empty() {
            backed_by_device()
        } else {
            self.include.iter().any(|g| g.matches(name))
        }
    }
}

/// What `/sys/class/net/NAME` says about an interface.
#[derive(Debug)]
pub struct SysNet {
    class_net: PathBuf,
}

impl SysNet {
    /// Under `sys` (normally `/sys`).
    pub fn new(sys: &Path) -> Self {
        Self {
            class_net: sys.join("class/net"),
        }
    }

    /// True unless `/sys/class/net/NAME` links under `devices/virtual/`. When sysfs cannot
    /// tell (not mounted, no such entry), the interface counts, as before there was a rule.
    pub fn backed_by_device(&self, name: &str) -> bool {
        match std::fs::read_link(self.class_net.join(name)) {
            Ok(target) => !target
                .components()
                .zip(target.components().skip(1))
                .any(|(a, b)| a.as_os_str() == "devices" && b.as_os_str() == "virtual"),
            Err(_) => true,
        }
    }

    /// `/sys/class/net/NAME/ifindex`.
    pub fn ifindex(&self, buf: &mut ReadBuf, name: &str) -> Option<u32> {
        let data = buf
            .read_all(&self.class_net.join(name).join("ifindex"))
            .ok()?;
        procfs::parse_u64(data.trim_ascii()).and_then(|v| u32::try_from(v).ok())
    }
}

/// One interface as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceState {
    /// Name in `/proc/net/dev`.
    pub name: String,
    /// `/sys/class/net/NAME/ifindex` (counted interfaces only): tells a rename from a new device.
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// Whether it counts.
    pub counted: bool,
    /// Last `rx_bytes`.
    pub rx: u64,
    /// Last `tx_bytes`.
    pub tx: u64,
}

/// The running totals and the baselines they continue from; what is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetState {
    /// `/proc/sys/kernel/random/boot_id` when the baselines were read.
    pub boot_id: String,
    /// Bytes received over the counted interfaces, running total.
    pub rx_total: u64,
    /// Bytes sent over the counted interfaces, running total.
    pub tx_total: u64,
    /// Every interface of the last tick (counted or not, so a known virtual one is not
    /// re-classified every tick).
    pub ifaces: Vec<IfaceState>,
}

/// The agent's running totals over the counted interfaces.
#[derive(Debug, Default)]
pub struct NetTotals {
    state: NetState,
    /// False until the first tick: the baselines of that tick depend on [`Self::restore`].
    primed: bool,
    /// First tick of a boot: the counted interfaces' counters are all this boot's traffic.
    count_from_zero: bool,
    /// First tick after a restore: the rule may have changed, so every name is asked again.
    reclassify: bool,
    /// First tick without any saved state: the totals start at the sum of every interface's
    /// counters (but `lo`), the figure agents before these totals sent, so an upgraded agent's
    /// totals do not go backwards. The collector takes an instance's first reading as a
    /// baseline, so this start is never billed.
    seed_all: bool,
    scratch: Vec<IfaceState>,
}

impl NetTotals {
    /// Continues from `saved` (as persisted by an earlier run): baselines are kept when it is
    /// from this boot (`boot_id`), else the counted interfaces' counters since boot are added
    /// on the first tick.
    pub fn restore(saved: Option<NetState>, boot_id: &str) -> NetTotals {
        let mut t = NetTotals::default();
        match saved {
            Some(s) if !boot_id.is_empty() && s.boot_id == boot_id => {
                t.state = s;
                t.primed = true;
                t.reclassify = true;
            }
            Some(s) => {
                t.state.rx_total = s.rx_total;
                t.state.tx_total = s.tx_total;
                t.count_from_zero = true;
            }
            None => {
                t.count_from_zero = true;
                t.seed_all = true;
            }
        }
        t.state.boot_id = boot_id.to_owned();
        t
    }

    /// What to persist.
    pub fn state(&self) -> &NetState {
        &self.state
    }

    /// Running totals `(rx, tx)`.
    pub fn totals(&self) -> (u64, u64) {
        (self.state.rx_total, self.state.tx_total)
    }

    /// The counted interfaces of the last tick, sorted.
    pub fn counted(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .state
            .ifaces
            .iter()
            .filter(|i| i.counted)
            .map(|i| i.name.clone())
            .collect();
        v.sort();
        v
    }

    /// One tick over `/proc/net/dev`'s interfaces (`lo` may be among them): adds the counted
    /// interfaces' deltas to the totals and returns them `(rx, tx)`.
    ///
    /// `counts(name)` is asked once per name not seen on the previous tick; `ifindex(name)`
    /// once per counted interface per tick (a few reads: the VM's own NICs only).
    pub fn update(
        &mut self,
        nets: &[DevCounters],
        mut counts: impl FnMut(&str) -> bool,
        mut ifindex: impl FnMut(&str) -> Option<u32>,
    ) -> (u64, u64) {
        let mut next = std::mem::take(&mut self.scratch);
        next.clear();
        let (mut rx, mut tx) = (0u64, 0u64);
        for dev in nets {
            let prev = self.state.ifaces.iter().find(|p| p.name == dev.name);
            let counted = match prev {
                Some(p) if !self.reclassify => p.counted,
                _ => counts(&dev.name),
            };
            let index = if counted { ifindex(&dev.name) } else { None };
            if self.seed_all && !counted && dev.name != "lo" {
                self.state.rx_total = self.state.rx_total.saturating_add(dev.a);
                self.state.tx_total = self.state.tx_total.saturating_add(dev.b);
            }
            let base = if !counted {
                None
            } else if !self.primed {
                self.count_from_zero.then_some((0, 0))
            } else {
                match prev {
                    // Same name, same device (or the index could not be read).
                    Some(p) if p.counted && (p.ifindex == index || index.is_none()) => {
                        Some((p.rx, p.tx))
                    }
                    // Same name, another device: a new interface.
                    Some(_) => None,
                    // A new name: a rename of a counted interface that vanished, else new.
                    None => index
                        .and_then(|ix| {
                            self.state.ifaces.iter().find(|p| {
                                p.counted
                                    && p.ifindex == Some(ix)
                                    && !nets.iter().any(|d| d.name == p.name)
                            })
                        })
                        .map(|p| (p.rx, p.tx)),
                }
            };
            if let Some((prx, ptx)) = base {
                rx = rx.saturating_add(dev.a.saturating_sub(prx));
                tx = tx.saturating_add(dev.b.saturating_sub(ptx));
            }
            next.push(IfaceState {
                name: dev.name.clone(),
                ifindex: index,
                counted,
                rx: dev.a,
                tx: dev.b,
            });
        }
        self.scratch = std::mem::replace(&mut self.state.ifaces, next);
        self.state.rx_total = self.state.rx_total.saturating_add(rx);
        self.state.tx_total = self.state.tx_total.saturating_add(tx);
        self.primed = true;
        self.count_from_zero = false;
        self.reclassify = false;
        self.seed_all = false;
        (rx, tx)
    }
}

#[cfg(test)]
mod tests;
