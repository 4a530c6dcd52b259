//! TCP sockets and their kernel byte counters from `NETLINK_SOCK_DIAG` (`inet_diag`), the
//! interface `ss` uses: one dump of both address families ([`request_both_families`]; one dump
//! per family where the kernel refuses that), `INET_DIAG_INFO` (`struct tcp_info`) per socket.
//!
//! Hand-written rather than `netlink-packet-sock-diag`: the three things read here (the socket
//! cookie, its inode, two `tcp_info` counters) sit at fixed offsets, while that crate refuses a
//! `tcp_info` shorter than its own struct (older kernels) and allocates per message and per
//! attribute. The socket itself is `socket2`'s, so this file needs no `unsafe`.
//!
//! Counters (`struct tcp_info`, `include/uapi/linux/tcp.h`):
//! * received = `tcpi_bytes_received` (offset 128, Linux ≥ 4.1): payload bytes received in
//!   sequence (duplicates not counted), whether or not the process has read them yet;
//! * sent = `tcpi_bytes_sent` (offset 200, Linux ≥ 4.19): payload bytes sent, retransmissions
//!   included (what crosses the interface), else `tcpi_bytes_acked` (offset 120, Linux ≥ 4.1) on
//!   older kernels: payload bytes the peer acknowledged.
//!
//! The agent's dumps carry a bytecode filter ([`request_without_loopback`]) so the kernel skips
//! sockets with a loopback end before building their `tcp_info`: the dump's cost grows with
//! every TCP socket of the host, and on a host with ~1,500 loopback connections (the shared
//! build machine: test servers, browsers) it was 16.5 % of the daemon's CPU (docs/benchmarks.md
//! §1c). The kernel still walks its socket hash; only the sockets kept cost a message. That walk
//! visits every bucket of the established hash (sized by RAM at boot: 262,144 on the 24 GB
//! build VM) even with a dozen sockets, ~20 % of the daemon's CPU there with one dump per family;
//! the one-walk request halves it, and a quiet namespace (no TCP socket opened since the last
//! walk, by the kernel's own count in `/proc/PID/net/snmp`) needs no walk at all: the last
//! answer's sockets are looked up one by one ([`SockDiag::dump`]).
//!
//! A `tcp_info` too short for the received counter (Linux < 4.1, e.g. 3.10 as in CentOS 7)
//! fails the dump with [`io::ErrorKind::Unsupported`]: the kernel cannot count any socket's
//! bytes, so the per-process network figures are not measured (null), never 0.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK` (`linux/inet_diag.h`): the original request, which dumps both address
/// families in one walk (`inet_diag_dump_compat` sets `AF_UNSPEC`); its answers carry this type.
const TCPDIAG_GETSOCK: u16 = 18;
/// `sizeof(struct inet_diag_req)`, the original request's body.
const REQ_COMPAT_LEN: usize = 60;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_V2_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 72;
/// `INET_DIAG_INFO` (`linux/inet_diag.h`): the attribute carrying `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
const RTA_HDRLEN: usize = 4;

const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_BYTES_SENT: usize = 200;

/// The error of a dump on a kernel whose `tcp_info` has no byte counters.
pub const TCP_INFO_TOO_SHORT: &str =
    "this kernel's tcp_info has no byte counters (tcpi_bytes_received needs Linux 4.1)";

/// A whole request: `nlmsghdr` + `inet_diag_req_v2`.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + REQ_V2_LEN;

/// `INET_DIAG_REQ_BYTECODE` (`linux/inet_diag.h`): the request attribute holding a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Filter operations (`enum` in `linux/inet_diag.h`; kernel `net/ipv4/inet_diag.c`
/// `inet_diag_bc_run`): an op whose condition holds advances by `yes` bytes, else by `no`; the
/// socket is dumped when the program ends exactly at its end, and skipped when a jump lands
/// 4 bytes past it.
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_COND: u8 = 7;
const INET_DIAG_BC_D_COND: u8 = 8;
/// `sizeof(struct inet_diag_bc_op)` + `sizeof(struct inet_diag_hostcond)` (before the address).
const BC_OP_LEN: usize = 4;
const HOSTCOND_LEN: usize = 8;

/// TCP states dumped: every state in which a full socket can carry data. Left out: `LISTEN`
/// (never carries data), `TIME_WAIT` and `SYN_RECV`/`NEW_SYN_RECV` (mini sockets without a
/// `tcp_info`; their final counters were in the full socket they replaced).
pub const STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 7) // CLOSE
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11); // CLOSING

/// A socket's `inet_diag_sockid` as the kernel reported it (ports, addresses, interface and
/// cookie, 48 bytes) with its address family: what an exact lookup ([`lookup_request`]) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `struct inet_diag_sockid`, byte for byte.
    pub id: [u8; SOCKID_LEN],
}

impl Default for SockId {
    fn default() -> Self {
        SockId {
            family: 0,
            id: [0; SOCKID_LEN],
        }
    }
}

/// `sizeof(struct inet_diag_sockid)`.
pub const SOCKID_LEN: usize = 48;

/// One TCP socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// `idiag_cookie`: unique for the boot, never reused (unlike the inode).
    pub cookie: u64,
    /// What names it in an exact lookup.
    pub id: SockId,
    /// `idiag_inode`: the sockfs inode `/proc/PID/fd/N` links to (`socket:[INODE]`); 0 for a
    /// socket no file refers to any more (closed by its process, still flushing).
    pub inode: u32,
    /// Traffic that never leaves the VM: a loopback address at either end, or both ends on the
    /// same address (a connection to one of the VM's own addresses is routed over `lo`).
    pub loopback: bool,
    /// Payload bytes received (see the module doc).
    pub bytes_received: u64,
    /// Payload bytes sent (see the module doc).
    pub bytes_sent: u64,
}

/// The dump request for one address family (`AF_INET` or `AF_INET6`).
#[must_use]
pub fn request(family: u8, seq: u32) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id.
    let q = NLMSG_HDRLEN;
    r[q] = family;
    r[q + 1] = libc::IPPROTO_TCP as u8;
    r[q + 2] = 1 << (INET_DIAG_INFO - 1); // idiag_ext: ask for tcp_info
    r[q + 4..q + 8].copy_from_slice(&STATES.to_ne_bytes());
    // inet_diag_sockid left zero: every socket.
    r
}

/// The loopback filter (see [`request_without_loopback`]) for a dump of `family`; the
/// `AF_INET6` one (both conditions) also serves a dump of both families.
fn loopback_bytecode(family: u8) -> Vec<u8> {
    let lo4: (u8, u8, &[u8]) = (libc::AF_INET as u8, 8, &[127, 0, 0, 0]);
    let lo6: (u8, u8, &[u8]) = (
        libc::AF_INET6 as u8,
        128,
        &std::net::Ipv6Addr::LOCALHOST.octets(),
    );
    let conds: &[(u8, u8, &[u8])] = if i32::from(family) == libc::AF_INET {
        &[lo4]
    } else {
        &[lo6, lo4]
    };
    let op_len = |addr: &[u8]| BC_OP_LEN + HOSTCOND_LEN + addr.len();
    let total: usize = 2 * conds.iter().map(|c| op_len(c.2) + BC_OP_LEN).sum::<usize>();
    let mut bc = Vec::with_capacity(total);
    for code in [INET_DIAG_BC_S_COND, INET_DIAG_BC_D_COND] {
        for &(cond_family, prefix_len, addr) in conds {
            // The condition: holds → on to the jump below (reject); fails → past it.
            let n = op_len(addr);
            bc.push(code);
            bc.push(n as u8);
            bc.extend_from_slice(&((n + BC_OP_LEN) as u16).to_ne_bytes());
            bc.push(cond_family);
            bc.push(prefix_len);
            bc.extend_from_slice(&[0, 0]);
            bc.extend_from_slice(&(-1i32).to_ne_bytes()); // any port
            bc.extend_from_slice(addr);
            // The jump: always taken (`no`), to 4 bytes past the end: the socket is skipped.
            let at = bc.len();
            bc.push(INET_DIAG_BC_JMP);
            bc.push(BC_OP_LEN as u8);
            bc.extend_from_slice(&((total - at + BC_OP_LEN) as u16).to_ne_bytes());
        }
    }
    debug_assert_eq!(bc.len(), total);
    bc
}

/// Appends `bc` as the request's `INET_DIAG_REQ_BYTECODE` attribute and fixes `nlmsg_len`.
fn with_bytecode(mut r: Vec<u8>, bc: &[u8]) -> Vec<u8> {
    let attr_len = RTA_HDRLEN + bc.len();
    r.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    r.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    r.extend_from_slice(bc);
    let len = r.len() as u32;
    r[0..4].copy_from_slice(&len.to_ne_bytes());
    r
}

/// The dump request for **both** address families in one walk of the kernel's socket hash
/// (`TCPDIAG_GETSOCK` with `struct inet_diag_req`), with the loopback filter when
/// `no_loopback`. Why: each dump walks every bucket of the established hash, however few
/// sockets there are (262,144 buckets, 2 MiB of bucket heads, on the project's 24 GB VM), and
/// the per-family requests walk it twice per tick (docs/benchmarks.md §1c).
#[must_use]
pub fn request_both_families(seq: u32, no_loopback: bool) -> Vec<u8> {
    request_both_families_with(
        seq,
        no_loopback.then(|| loopback_bytecode(libc::AF_INET6 as u8)),
    )
}

/// [`request_both_families`] with the filter `bytecode` (none: every socket).
fn request_both_families_with(seq: u32, bytecode: Option<Vec<u8>>) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_COMPAT_LEN;
    let mut r = vec![0u8; len];
    r[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    let q = NLMSG_HDRLEN;
    // idiag_family (ignored: the kernel dumps AF_UNSPEC), idiag_src_len, idiag_dst_len.
    r[q + 3] = 1 << (INET_DIAG_INFO - 1); // idiag_ext: ask for tcp_info
    // inet_diag_sockid (48 bytes) left zero: every socket; then idiag_states, idiag_dbs.
    r[q + 52..q + 56].copy_from_slice(&STATES.to_ne_bytes());
    match bytecode {
        Some(bc) => with_bytecode(r, &bc),
        None => r,
    }
}

/// [`request`] with a filter that makes the kernel skip sockets with a loopback end
/// (`127.0.0.0/8`, `::1`, or `::ffff:127.0.0.0/104`: an `AF_INET` condition also matches an
/// IPv4-mapped IPv6 address) before it builds their `tcp_info`. Those are sockets
/// [`is_local_traffic`] calls loopback, which the agent does not count: on a host with
/// thousands of loopback connections (test servers, browsers) this is most of the dump's cost.
/// Sockets whose two ends share a non-loopback address are still dumped and left out after.
#[must_use]
pub fn request_without_loopback(family: u8, seq: u32) -> Vec<u8> {
    with_bytecode(request(family, seq).to_vec(), &loopback_bytecode(family))
}

/// The exact-lookup request for one known socket (`SOCK_DIAG_BY_FAMILY` without
/// `NLM_F_DUMP`: the kernel finds it by its addresses and ports in its hash, `O(1)`, and checks
/// the cookie), acknowledged (`NLM_F_ACK`) so every request's answer ends with an
/// `NLMSG_ERROR`: errno 0 after the socket's message, `ENOENT` (or `ESTALE`, cookie mismatch)
/// for a socket that has gone.
///
/// An `AF_INET6` socket whose two addresses are IPv4-mapped (a dual-stack server's IPv4
/// connection) is asked for as `AF_INET`, its addresses in IPv4 form: such a socket sits in the
/// hash under its IPv4 addresses, and kernels before the fix of `inet_diag_find_one_icsk` for
/// mapped addresses (Linux 4.8, not backported everywhere) answer the `AF_INET6` request
/// `ENOENT` for a live socket.
#[must_use]
pub fn lookup_request(id: &SockId, seq: u32) -> [u8; REQUEST_LEN] {
    let q = NLMSG_HDRLEN + 8;
    let (src, dst) = (&id.id[4..20], &id.id[20..36]);
    let mapped = |a: &[u8]| a[..10].iter().all(|&b| b == 0) && a[10..12] == [0xff, 0xff];
    let as_v4 = i32::from(id.family) == libc::AF_INET6 && mapped(src) && mapped(dst);
    let mut r = request(
        if as_v4 {
            libc::AF_INET as u8
        } else {
            id.family
        },
        seq,
    );
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    r[q..q + SOCKID_LEN].copy_from_slice(&id.id);
    if as_v4 {
        let ids = &mut r[q..q + SOCKID_LEN];
        for at in [4, 20] {
            let v4: [u8; 4] = [ids[at + 12], ids[at + 13], ids[at + 14], ids[at + 15]];
            ids[at..at + 16].fill(0);
            ids[at..at + 4].copy_from_slice(&v4);
        }
    }
    r
}

/// The messages of one netlink datagram as `(type, sequence number, payload)`; a length out of
/// bounds ends it with an error.
fn messages(data: &[u8]) -> impl Iterator<Item = io::Result<(u16, u32, &[u8])>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(malformed("netlink message length out of bounds")));
        }
        let msg = (u16_at(rest, 4), u32_at(rest, 8), &rest[NLMSG_HDRLEN..len]);
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok(msg))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0: an acknowledgement).
fn nlmsg_errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map_or(0, |b| i32_at(b, 0))
        .saturating_neg()
}

/// Parses one datagram of the answers to exact lookups numbered `first_seq..first_seq + count`,
/// appending the sockets found to `out`; returns how many requests it finished (their
/// `NLMSG_ERROR`). A socket that has gone finishes its request without a socket; any other
/// errno is an error (the kernel does not answer lookups: dump instead).
pub fn parse_lookup_datagram(
    data: &[u8],
    first_seq: u32,
    count: u32,
    out: &mut Vec<TcpSocket>,
) -> io::Result<u32> {
    let mut finished = 0;
    for msg in messages(data) {
        let (kind, msg_seq, payload) = msg?;
        if msg_seq.wrapping_sub(first_seq) >= count {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let errno = nlmsg_errno(payload);
                if !matches!(errno, 0 | libc::ENOENT | libc::ESTALE) {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                finished += 1;
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(s) = parse_diag_msg_checked(payload)? {
                    out.push(s);
                }
            }
            _ => {}
        }
    }
    Ok(finished)
}

/// `ActiveOpens + PassiveOpens` of the `Tcp:` lines of `/proc/PID/net/snmp`: every TCP socket
/// that reached `SYN_SENT` or was created established (a handshake completed, Fast Open
/// included) in the network namespace counts once (kernel `tcp_connect`,
/// `tcp_create_openreq_child`). A passive socket is counted just before it enters the socket
/// hash, so a count read during a walk may include one the walk did not find: [`SockDiag`]
/// trusts a walk only when the count had not moved since the tick before. A socket restored
/// with `TCP_REPAIR` is not counted at all: found by the walk made at least once a minute.
#[must_use]
pub fn parse_tcp_opens(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let mut active = None;
    let mut passive = None;
    for (name, value) in names
        .split_ascii_whitespace()
        .zip(values.split_ascii_whitespace())
    {
        match name {
            "ActiveOpens" => active = value.parse::<u64>().ok(),
            "PassiveOpens" => passive = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    active?.checked_add(passive?)
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen.
    Done,
}

/// Parses one datagram of the dump answering request `seq`, appending its sockets to `out`.
/// Messages of another sequence number (left over from an abandoned dump) are skipped.
pub fn parse_datagram(data: &[u8], seq: u32, out: &mut Vec<TcpSocket>) -> io::Result<Progress> {
    for msg in messages(data) {
        let (kind, msg_seq, payload) = msg?;
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(Progress::Done),
            NLMSG_ERROR => {
                let errno = nlmsg_errno(payload);
                if errno == 0 {
                    continue; // an acknowledgement, not an error
                }
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                if let Some(s) = parse_diag_msg_checked(payload)? {
                    out.push(s);
                }
            }
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// One `inet_diag_msg` and its attributes; `None` without a usable `tcp_info`.
#[must_use]
pub fn parse_diag_msg(payload: &[u8]) -> Option<TcpSocket> {
    parse_diag_msg_checked(payload).ok().flatten()
}

/// [`parse_diag_msg`], failing with [`io::ErrorKind::Unsupported`] on a `tcp_info` that has no
/// byte counters (a kernel before 4.1).
fn parse_diag_msg_checked(payload: &[u8]) -> io::Result<Option<TcpSocket>> {
    if payload.len() < DIAG_MSG_LEN {
        return Ok(None);
    }
    let family = payload[0];
    let src = &payload[8..24];
    let dst = &payload[24..40];
    let cookie = u64::from(u32_at(payload, 44)) | (u64::from(u32_at(payload, 48)) << 32);
    let inode = u32_at(payload, 68);
    let mut attrs = &payload[DIAG_MSG_LEN..];
    while attrs.len() >= RTA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0));
        if len < RTA_HDRLEN || len > attrs.len() {
            return Ok(None);
        }
        if u16_at(attrs, 2) == INET_DIAG_INFO {
            let Some((bytes_received, bytes_sent)) = tcp_info_counters(&attrs[RTA_HDRLEN..len])
            else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    TCP_INFO_TOO_SHORT,
                ));
            };
            let mut id = SockId {
                family,
                id: [0; SOCKID_LEN],
            };
            id.id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
            return Ok(Some(TcpSocket {
                cookie,
                id,
                inode,
                loopback: is_local_traffic(family, src, dst),
                bytes_received,
                bytes_sent,
            }));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(None)
}

/// `(received, sent)` from a `struct tcp_info` of whatever length the kernel gave.
#[must_use]
pub fn tcp_info_counters(info: &[u8]) -> Option<(u64, u64)> {
    let received = u64_at(info, TCPI_BYTES_RECEIVED)?;
    let sent = u64_at(info, TCPI_BYTES_SENT).or_else(|| u64_at(info, TCPI_BYTES_ACKED))?;
    Some((received, sent))
}

/// See [`TcpSocket::loopback`]. `src` and `dst` are the 16-byte `idiag_src`/`idiag_dst`
/// (IPv4 in the first 4 bytes).
#[must_use]
pub fn is_local_traffic(family: u8, src: &[u8], dst: &[u8]) -> bool {
    let v4 = |a: &[u8]| [a[0], a[1], a[2], a[3]];
    let (s, d) = if i32::from(family) == libc::AF_INET {
        (v4(src), v4(dst))
    } else {
        let s6: [u8; 16] = src.try_into().unwrap_or([0; 16]);
        let d6: [u8; 16] = dst.try_into().unwrap_or([0; 16]);
        if s6 == d6 {
            return true;
        }
        let (s, d) = (std::net::Ipv6Addr::from(s6), std::net::Ipv6Addr::from(d6));
        if s.is_loopback() || d.is_loopback() {
            return true;
        }
        // v4-mapped (a dual-stack socket talking IPv4): judge the IPv4 addresses.
        match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
            (Some(s), Some(d)) => (s.octets(), d.octets()),
            _ => return false,
        }
    };
    s == d || s[0] == 127 || d[0] == 127
}

/// A `NETLINK_SOCK_DIAG` socket and its receive buffer.
#[derive(Debug)]
pub struct SockDiag {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// The kernel refused the loopback filter (`EINVAL` from its bytecode audit): dumps are
    /// unfiltered from then on, as before the filter existed.
    filter_refused: bool,
    /// The kernel refused the one-walk request ([`request_both_families`]): one dump per
    /// family from then on.
    one_walk_refused: bool,
    /// The loopback filter for a family: [`loopback_bytecode`]; a test puts bytecode the
    /// kernel refuses here, to drive the fallbacks against the real kernel.
    loopback_filter: fn(u8) -> Vec<u8>,
    /// The sockets of the last answer, looked up one by one next time when no socket has been
    /// opened since the last walk (see [`Self::dump`]).
    known: Vec<SockId>,
    /// The filter (`no_loopback`), the TCP opens count ([`parse_tcp_opens`]) and the time of
    /// the last walk that lookups may continue from; `None` after a failed walk, when the count
    /// could not be read, or when it had moved since the tick before (a socket counted as
    /// opened may not have been in the hash yet).
    walked_at: Option<(bool, u64, Instant)>,
    /// The opens count read by the previous answer.
    last_opens: Option<u64>,
    /// Answers by lookups since the last walk.
    lookups_since_walk: u32,
    /// A walk at least this often, however quiet the namespace ([`WALK_EVERY`]).
    walk_every: Duration,
    /// Cookies lookups found gone since the last walk: one that walk still finds means lookups
    /// miss live sockets on this kernel.
    gone_by_lookup: Vec<u64>,
    /// Most known sockets looked up one by one rather than walked (see [`lookup_limit`]).
    lookup_limit: usize,
    /// Lookups are off: the kernel refused one, or missed a live socket.
    lookups_refused: bool,
    /// Reused request and `/proc/thread-self/net/snmp` buffers, the cookies an answer found
    /// (sorted), and the snmp file, kept open (re-read at offset 0 each tick).
    req: Vec<u8>,
    snmp: Vec<u8>,
    found: Vec<u64>,
    snmp_file: Option<std::fs::File>,
}

/// A walk at least this often however quiet the namespace: bounds how long a socket the opens
/// count does not count (`TCP_REPAIR`) goes unseen.
const WALK_EVERY: Duration = Duration::from_secs(60);
/// Exact lookups per `send`. Each answer queues ~2 KiB of kernel memory (the socket's message
/// and the acknowledgement) against the receive buffer before the first `recv`; 16 stay well
/// inside even a 128 KiB `rmem_default` (64 did not: `ENOBUFS`).
const LOOKUPS_PER_SEND: usize = 16;

/// How many known sockets are cheaper looked up one by one than walked. The walk visits every
/// bucket of the established hash, which the kernel sizes at boot at one bucket per 128 KiB of
/// RAM (`tcp_init`: `alloc_large_system_hash(.., 17, ..)`), ~0.6 ms for 262,144 buckets on the
/// build VM, cache misses mostly; a lookup with its answer costs about what 512 buckets do.
fn lookup_limit(mem_total_bytes: u64) -> usize {
    let buckets = mem_total_bytes / (128 * 1024);
    usize::try_from(buckets / 512)
        .unwrap_or(usize::MAX)
        .clamp(16, 4096)
}

/// The kernel's dump datagrams are at most 32 KiB; twice that leaves no room for truncation.
const RECV_BUF: usize = 64 * 1024;
/// A dump that stalls this long fails instead of stalling the sampler.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

impl SockDiag {
    /// Opens the socket. Fails where netlink or `sock_diag` is unavailable (seccomp, an LSM, a
    /// kernel without `inet_diag`); dumping itself needs no privilege.
    pub fn open() -> io::Result<SockDiag> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )?;
        sock.set_read_timeout(Some(RECV_TIMEOUT))?;
        Ok(SockDiag {
            sock,
            buf: vec![0; RECV_BUF],
            seq: 0,
            filter_refused: false,
            one_walk_refused: false,
            loopback_filter: loopback_bytecode,
            known: Vec::new(),
            walked_at: None,
            last_opens: None,
            lookups_since_walk: 0,
            walk_every: WALK_EVERY,
            gone_by_lookup: Vec::new(),
            lookup_limit: lookup_limit(mem_total_bytes()),
            lookups_refused: false,
            req: Vec::new(),
            snmp: Vec::new(),
            found: Vec::new(),
            snmp_file: None,
        })
    }

    /// Every TCP socket of this network namespace, IPv4 then IPv6, into `out` (cleared first).
    ///
    /// Found by a walk of the kernel's socket hash, or, when no TCP socket has been opened in
    /// the namespace since the last walk (its opens count, [`parse_tcp_opens`], has not moved)
    /// and there are few, by looking up the last answer's sockets one by one: the same sockets
    /// less those that have gone, without visiting every bucket (~10 % of the daemon's CPU on
    /// a quiet 24 GB VM: docs/benchmarks.md §1c). A walk at least once a minute (`WALK_EVERY`).
    pub fn dump(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        self.dump_filtered(out, false)
    }

    /// [`Self::dump`] without the sockets [`request_without_loopback`] leaves out; a kernel
    /// that refuses the filter gets unfiltered dumps (the loopback sockets are then left out
    /// after the dump).
    pub fn dump_without_loopback(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        if !self.filter_refused {
            match self.dump_filtered(out, true) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.filter_refused = true;
                    // The one-walk request's EINVAL may have been the filter's too: try it
                    // again unfiltered (it marks itself refused once more if it is).
                    self.one_walk_refused = false;
                    tracing::info!(error = %e,
                        "The kernel refused the sock_diag loopback filter; dumping every socket.");
                }
                r => return r,
            }
        }
        self.dump_filtered(out, false)
    }

    fn dump_filtered(&mut self, out: &mut Vec<TcpSocket>, no_loopback: bool) -> io::Result<()> {
        // Read before the walk or the lookups: a socket opened after it moves the count.
        let opens = self.tcp_opens();
        let stable = opens.is_some() && opens == self.last_opens;
        self.last_opens = opens;
        let quiet = self.walked_at.is_some_and(|(filtered, at_opens, at)| {
            filtered == no_loopback && Some(at_opens) == opens && at.elapsed() < self.walk_every
        });
        if quiet && !self.lookups_refused && self.known.len() <= self.lookup_limit {
            match self.look_up_known(out) {
                Ok(()) => {
                    self.lookups_since_walk += 1;
                    self.found.clear();
                    self.found.extend(out.iter().map(|s| s.cookie));
                    self.found.sort_unstable();
                    let found = &self.found;
                    self.gone_by_lookup.extend(
                        self.known
                            .iter()
                            .map(cookie_of)
                            .filter(|c| found.binary_search(c).is_err()),
                    );
                    self.known.clear();
                    self.known.extend(out.iter().map(|s| s.id));
                    return Ok(());
                }
                Err(e) => {
                    // A refusal is for good; anything else (a full receive buffer, a timeout)
                    // costs this tick a walk.
                    self.lookups_refused = matches!(
                        e.raw_os_error(),
                        Some(
                            libc::EINVAL
                                | libc::EOPNOTSUPP
                                | libc::EPERM
                                | libc::EACCES
                                | libc::ENOSYS
                                | libc::EPROTONOSUPPORT
                        )
                    );
                    tracing::info!(error = %e, refused = self.lookups_refused,
                        "sock_diag exact lookups failed; walking the socket hash.");
                    self.drain();
                }
            }
        }
        let walked = self.walk(out, no_loopback);
        self.known.clear();
        self.lookups_since_walk = 0;
        self.walked_at = None;
        if walked.is_ok() {
            self.gone_by_lookup.sort_unstable();
            if out
                .iter()
                .any(|s| self.gone_by_lookup.binary_search(&s.cookie).is_ok())
            {
                self.lookups_refused = true;
                tracing::warn!(
                    "sock_diag lookups missed a live socket on this kernel; walking the socket hash every tick."
                );
            }
            self.known.extend(out.iter().map(|s| s.id));
            if let (true, Some(o)) = (stable, opens) {
                self.walked_at = Some((no_loopback, o, Instant::now()));
            }
        }
        self.gone_by_lookup.clear();
        walked
    }

    /// The sockets in `self.known` that are still there, with their counters, into `out`.
    fn look_up_known(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        out.clear();
        let known = std::mem::take(&mut self.known);
        let mut result = Ok(());
        for chunk in known.chunks(LOOKUPS_PER_SEND) {
            result = self.look_up(chunk, out);
            if result.is_err() {
                break;
            }
        }
        self.known = known;
        result
    }

    /// One `send` of lookups for `ids`, and their answers into `out`.
    fn look_up(&mut self, ids: &[SockId], out: &mut Vec<TcpSocket>) -> io::Result<()> {
        let first = self.seq.wrapping_add(1);
        self.req.clear();
        for id in ids {
            self.seq = self.seq.wrapping_add(1);
            self.req.extend_from_slice(&lookup_request(id, self.seq));
        }
        let sent = self.sock.send(&self.req)?;
        if sent != self.req.len() {
            return Err(malformed("short netlink send"));
        }
        let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let mut finished = 0;
        while finished < count {
            let n = self.recv()?;
            finished += parse_lookup_datagram(&self.buf[..n], first, count, out)?;
        }
        Ok(())
    }

    /// One datagram into `self.buf`; its length.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            let n = match (&self.sock).read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(malformed("netlink socket closed"));
            }
            if n == self.buf.len() {
                // Possibly truncated: grow for the next exchange and give up on this one.
                self.buf.resize(self.buf.len() * 2, 0);
                return Err(malformed("netlink datagram larger than the buffer"));
            }
            return Ok(n);
        }
    }

    /// Discards what an abandoned exchange left queued (answers, a pending `ENOBUFS`), so the
    /// next request reads only its own answers.
    fn drain(&mut self) {
        if self.sock.set_nonblocking(true).is_err() {
            return;
        }
        for _ in 0..1024 {
            match (&self.sock).read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
        // Back to blocking reads with their timeout; should this fail, the next read's
        // `WouldBlock` fails that tick's answer, which is measured as unmeasured, not wrong.
        let _ = self.sock.set_nonblocking(false);
    }

    /// [`parse_tcp_opens`] of this thread's network namespace (the socket's: it was made here).
    fn tcp_opens(&mut self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        if self.snmp_file.is_none() {
            // `thread-self` since Linux 3.17; `self` (the thread group leader's) before.
            self.snmp_file = std::fs::File::open("/proc/thread-self/net/snmp")
                .or_else(|_| std::fs::File::open("/proc/self/net/snmp"))
                .ok();
        }
        let file = self.snmp_file.as_ref()?;
        self.snmp.clear();
        loop {
            let at = self.snmp.len();
            self.snmp.resize(at + 4096, 0);
            match file.read_at(&mut self.snmp[at..], at as u64) {
                Ok(0) => {
                    self.snmp.truncate(at);
                    break;
                }
                Ok(n) => self.snmp.truncate(at + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.snmp.truncate(at),
                Err(_) => {
                    self.snmp_file = None; // opened again next time
                    return None;
                }
            }
        }
        parse_tcp_opens(&self.snmp)
    }

    /// One walk of the socket hash (both families at once where the kernel can).
    fn walk(&mut self, out: &mut Vec<TcpSocket>, no_loopback: bool) -> io::Result<()> {
        out.clear();
        if !self.one_walk_refused {
            self.seq = self.seq.wrapping_add(1);
            let filter = no_loopback.then(|| (self.loopback_filter)(libc::AF_INET6 as u8));
            let req = request_both_families_with(self.seq, filter);
            match self.dump_request(&req, out) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP)
                    ) =>
                {
                    // Asked per family next; a refused filter shows there (`EINVAL` again).
                    self.one_walk_refused = true;
                    out.clear();
                    tracing::info!(error = %e,
                        "The kernel refused the one-walk sock_diag request; dumping each address family.");
                }
                r => return r,
            }
        }
        self.dump_family(libc::AF_INET as u8, out, no_loopback)?;
        match self.dump_family(libc::AF_INET6 as u8, out, no_loopback) {
            // A kernel without IPv6 has no handler for the family: no IPv6 sockets.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    fn dump_family(
        &mut self,
        family: u8,
        out: &mut Vec<TcpSocket>,
        no_loopback: bool,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = if no_loopback {
            with_bytecode(
                request(family, self.seq).to_vec(),
                &(self.loopback_filter)(family),
            )
        } else {
            request(family, self.seq).to_vec()
        };
        self.dump_request(&req, out)
    }

    /// Sends `req` (a dump request numbered `self.seq`) and appends its sockets to `out`.
    fn dump_request(&mut self, req: &[u8], out: &mut Vec<TcpSocket>) -> io::Result<()> {
        let sent = self.sock.send(req)?;
        if sent != req.len() {
            return Err(malformed("short netlink send"));
        }
        loop {
            let n = self.recv()?;
            if parse_datagram(&self.buf[..n], self.seq, out)? == Progress::Done {
                return Ok(());
            }
        }
    }
}

/// The cookie inside a socket's `inet_diag_sockid`.
fn cookie_of(id: &SockId) -> u64 {
    u64::from(u32_at(&id.id, 40)) | (u64::from(u32_at(&id.id, 44)) << 32)
}

/// `MemTotal` of `/proc/meminfo` in bytes (0 when unreadable: the smallest lookup limit).
fn mem_total_bytes() -> u64 {
    std::fs::read("/proc/meminfo")
        .ok()
        .and_then(|d| super::procfs::parse_meminfo(&d))
        .map_or(0, |m| m.total_bytes)
}

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests;
