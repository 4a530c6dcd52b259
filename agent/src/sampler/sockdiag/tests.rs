//! sock_diag request and answer parsing, on hand-built datagrams and once on the real kernel.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};

use super::*;

/// Connections this test process holds: loopback IPv4, loopback IPv6 (where the host has it) and
/// one to this host's own non-loopback address (where it has a route anywhere; no packet is
/// sent). The listeners are kept so the connections stay established.
struct TestConnections {
    _listeners: Vec<TcpListener>,
    lo: TcpStream,
    lo6: Option<TcpStream>,
    own: Option<TcpStream>,
}

fn test_connections() -> TestConnections {
    let connect =
        |l: &TcpListener| TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let lo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let lo6 = TcpListener::bind("[::1]:0").ok();
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|()| u))
        .and_then(|u| u.local_addr())
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .and_then(|ip| TcpListener::bind((ip, 0)).ok());
    TestConnections {
        lo: connect(&lo),
        lo6: lo6.as_ref().map(connect),
        own: own.as_ref().map(connect),
        _listeners: [Some(lo), lo6, own].into_iter().flatten().collect(),
    }
}

/// The socket inode of one of this process's sockets (what sock_diag reports as `inode`).
fn socket_inode_of(s: &impl std::os::fd::AsRawFd) -> Option<u32> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).ok()?;
    crate::sampler::netflow::socket_inode(target.as_os_str().as_encoded_bytes())
}

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// A `tcp_info` of `len` bytes with the three counters set (as far as `len` reaches).
fn tcp_info(len: usize, acked: u64, received: u64, sent: u64) -> Vec<u8> {
    let mut info = vec![0u8; len.max(208)];
    info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8].copy_from_slice(&acked.to_ne_bytes());
    info[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8].copy_from_slice(&received.to_ne_bytes());
    info[TCPI_BYTES_SENT..TCPI_BYTES_SENT + 8].copy_from_slice(&sent.to_ne_bytes());
    info.truncate(len);
    info
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((RTA_HDRLEN + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

struct Msg {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    cookie: u64,
    inode: u32,
    attrs: Vec<Vec<u8>>,
}

impl Msg {
    fn v4(src: Ipv4Addr, dst: Ipv4Addr, cookie: u64, inode: u32, info: &[u8]) -> Self {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[..4].copy_from_slice(&src.octets());
        d[..4].copy_from_slice(&dst.octets());
        Msg {
            family: AF_INET,
            src: s,
            dst: d,
            cookie,
            inode,
            // SHUTDOWN (8) first, as the kernel sends it, then INFO.
            attrs: vec![attr(8, &[0]), attr(INET_DIAG_INFO, info)],
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, cookie: u64, inode: u32, info: &[u8]) -> Self {
        Msg {
            family: AF_INET6,
            src: src.octets(),
            dst: dst.octets(),
            cookie,
            inode,
            attrs: vec![attr(INET_DIAG_INFO, info)],
        }
    }

    /// The `inet_diag_sockid` the payload carries: ports 40000 → 443, the addresses, interface
    /// 0, the cookie.
    fn sock_id(&self) -> SockId {
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&443u16.to_be_bytes());
        id[4..20].copy_from_slice(&self.src);
        id[20..36].copy_from_slice(&self.dst);
        id[40..48].copy_from_slice(&self.cookie.to_ne_bytes());
        SockId {
            family: self.family,
            id,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = self.family;
        p[1] = 1; // ESTABLISHED
        p[4..6].copy_from_slice(&40000u16.to_be_bytes());
        p[6..8].copy_from_slice(&443u16.to_be_bytes());
        p[8..24].copy_from_slice(&self.src);
        p[24..40].copy_from_slice(&self.dst);
        p[44..48].copy_from_slice(&(self.cookie as u32).to_ne_bytes());
        p[48..52].copy_from_slice(&((self.cookie >> 32) as u32).to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&self.inode.to_ne_bytes());
        for a in &self.attrs {
            p.extend_from_slice(a);
        }
        p
    }
}

fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&4242u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

fn done(seq: u32) -> Vec<u8> {
    nlmsg(NLMSG_DONE, seq, &0i32.to_ne_bytes())
}

const EXT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

#[test]
fn request_layout() {
    let r = request(AF_INET6, 7);
    assert_eq!(u32_at(&r, 0), 72, "nlmsg_len");
    assert_eq!(u16_at(&r, 4), 20, "SOCK_DIAG_BY_FAMILY");
    assert_eq!(u16_at(&r, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
    assert_eq!(u32_at(&r, 8), 7, "seq");
    assert_eq!(r[16], AF_INET6);
    assert_eq!(r[17], 6, "IPPROTO_TCP");
    assert_eq!(r[18], 0b10, "idiag_ext = 1 << (INET_DIAG_INFO - 1)");
    let states = u32_at(&r, 20);
    assert_eq!(states, STATES);
    for (state, wanted) in [
        (1, true),   // ESTABLISHED
        (4, true),   // FIN_WAIT1
        (8, true),   // CLOSE_WAIT
        (6, false),  // TIME_WAIT
        (10, false), // LISTEN
        (12, false), // NEW_SYN_RECV
    ] {
        assert_eq!(states & (1 << state) != 0, wanted, "state {state}");
    }
    assert!(r[24..].iter().all(|&b| b == 0), "sockid: every socket");
}

/// Walks a filter as `inet_diag_bc_run` does, for a socket whose source and destination match
/// the loopback conditions as given; true: dumped.
fn run_filter(bc: &[u8], src_lo: bool, dst_lo: bool) -> bool {
    let mut at = 0usize;
    while at < bc.len() {
        let (code, yes, no) = (
            bc[at],
            usize::from(bc[at + 1]),
            usize::from(u16_at(bc, at + 2)),
        );
        let holds = match code {
            7 => src_lo,
            8 => dst_lo,
            1 => false, // JMP
            other => panic!("unexpected op {other}"),
        };
        at += if holds { yes } else { no };
    }
    at == bc.len()
}

#[test]
fn loopback_filter_layout_and_logic() {
    for (family, conds) in [(AF_INET, 1usize), (AF_INET6, 2)] {
        let r = request_without_loopback(family, 9);
        let plain = request(family, 9);
        assert_eq!(&r[4..REQUEST_LEN], &plain[4..], "same request otherwise");
        assert_eq!(u32_at(&r, 0) as usize, r.len(), "nlmsg_len");
        let attr = &r[REQUEST_LEN..];
        assert_eq!(u16_at(attr, 0) as usize, attr.len(), "rta_len");
        assert_eq!(u16_at(attr, 2), 1, "INET_DIAG_REQ_BYTECODE");
        let bc = &attr[4..];
        // Per condition: S_COND + JMP and D_COND + JMP.
        let v4_len = 16 + 4;
        let v6_len = 28 + 4;
        let want = if conds == 1 {
            2 * v4_len
        } else {
            2 * (v4_len + v6_len)
        };
        assert_eq!(bc.len(), want);
        // The kernel's audit: every `yes` chain step lands on an op, and ends exactly at the
        // end; every `no` is a multiple of 4 and at most 4 past the end.
        let mut at = 0;
        while at < bc.len() {
            let (yes, no) = (usize::from(bc[at + 1]), usize::from(u16_at(bc, at + 2)));
            assert!(yes >= 4 && yes % 4 == 0 && no % 4 == 0, "op at {at}");
            assert!(at + no <= bc.len() + 4, "op at {at}");
            if bc[at] != 1 {
                assert_eq!(
                    i32::from_ne_bytes(bc[at + 8..at + 12].try_into().unwrap()),
                    -1
                );
            }
            at += yes;
        }
        assert_eq!(at, bc.len());
        assert!(run_filter(bc, false, false), "other traffic is dumped");
        assert!(!run_filter(bc, true, false));
        assert!(!run_filter(bc, false, true));
        assert!(!run_filter(bc, true, true));
    }
}

#[test]
fn parses_sockets_across_datagrams_until_done() {
    let info = tcp_info(232, 5, 1_000, 2_000);
    let m4 = Msg::v4(EXT, PEER, 0x1_0000_0002, 77, &info);
    let m6 = Msg::v6(
        "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        "2001:db8::2".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        9,
        78,
        &info,
    );
    let mut d1 = nlmsg(SOCK_DIAG_BY_FAMILY, 3, &m4.payload());
    d1.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 3, &m6.payload()));
    let mut out = Vec::new();
    assert_eq!(parse_datagram(&d1, 3, &mut out).ok(), Some(Progress::More));
    assert_eq!(
        parse_datagram(&done(3), 3, &mut out).ok(),
        Some(Progress::Done)
    );
    assert_eq!(
        out,
        vec![
            TcpSocket {
                cookie: 0x1_0000_0002,
                id: m4.sock_id(),
                inode: 77,
                loopback: false,
                bytes_received: 1_000,
                bytes_sent: 2_000,
            },
            TcpSocket {
                cookie: 9,
                id: m6.sock_id(),
                inode: 78,
                loopback: false,
                bytes_received: 1_000,
                bytes_sent: 2_000,
            },
        ]
    );
}

#[test]
fn skips_other_sequence_numbers_and_acks() {
    let info = tcp_info(232, 0, 1, 2);
    let mut d = nlmsg(
        SOCK_DIAG_BY_FAMILY,
        2,
        &Msg::v4(EXT, PEER, 1, 1, &info).payload(),
    );
    d.extend(done(2)); // a stale dump's end must not end this one
    d.extend(nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes()));
    d.extend(nlmsg(
        SOCK_DIAG_BY_FAMILY,
        3,
        &Msg::v4(EXT, PEER, 2, 2, &info).payload(),
    ));
    let mut out = Vec::new();
    assert_eq!(parse_datagram(&d, 3, &mut out).ok(), Some(Progress::More));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cookie, 2);
}

#[test]
fn kernel_error_is_an_error() {
    let d = nlmsg(NLMSG_ERROR, 1, &(-libc::EPERM).to_ne_bytes());
    let err = parse_datagram(&d, 1, &mut Vec::new()).err();
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EPERM));
}

#[test]
fn malformed_lengths_are_errors_not_panics() {
    let info = tcp_info(232, 0, 1, 2);
    let good = nlmsg(
        SOCK_DIAG_BY_FAMILY,
        1,
        &Msg::v4(EXT, PEER, 1, 1, &info).payload(),
    );
    // nlmsg_len past the end of the datagram.
    let mut long = good.clone();
    long[0..4].copy_from_slice(&(good.len() as u32 + 4).to_ne_bytes());
    assert!(parse_datagram(&long, 1, &mut Vec::new()).is_err());
    // nlmsg_len below the header.
    let mut short = good.clone();
    short[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(parse_datagram(&short, 1, &mut Vec::new()).is_err());
    // Every truncation of a message: an error or nothing, never a panic or a socket.
    for cut in 0..good.len() {
        let mut out = Vec::new();
        let _ = parse_datagram(&good[..cut], 1, &mut out);
        assert!(out.is_empty(), "cut at {cut}");
    }
    // An attribute whose length runs past the message: the socket is dropped.
    let mut p = Msg::v4(EXT, PEER, 1, 1, &info).payload();
    p[DIAG_MSG_LEN..DIAG_MSG_LEN + 2].copy_from_slice(&4000u16.to_ne_bytes());
    assert_eq!(parse_diag_msg(&p), None);
}

#[test]
fn tcp_info_by_kernel_generation() {
    // Linux ≥ 4.19: bytes_sent (retransmissions included).
    assert_eq!(tcp_info_counters(&tcp_info(232, 5, 10, 20)), Some((10, 20)));
    assert_eq!(tcp_info_counters(&tcp_info(208, 5, 10, 20)), Some((10, 20)));
    // 4.1–4.18: no bytes_sent, bytes_acked instead.
    assert_eq!(tcp_info_counters(&tcp_info(192, 5, 10, 20)), Some((10, 5)));
    assert_eq!(tcp_info_counters(&tcp_info(136, 5, 10, 20)), Some((10, 5)));
    // Older: no counters, no socket.
    assert_eq!(tcp_info_counters(&tcp_info(120, 5, 10, 20)), None);
    let old = Msg::v4(EXT, PEER, 1, 1, &tcp_info(104, 0, 0, 0)).payload();
    assert_eq!(parse_diag_msg(&old), None);
    // No INFO attribute at all (the kernel could not fit it): no socket.
    let mut bare = Msg::v4(EXT, PEER, 1, 1, &[]);
    bare.attrs.clear();
    assert_eq!(parse_diag_msg(&bare.payload()), None);
}

#[test]
fn loopback_and_local_traffic() {
    let v4 = |a: Ipv4Addr| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.octets());
        b
    };
    let v6 = |s: &str| s.parse::<Ipv6Addr>().map(|a| a.octets()).unwrap_or([0; 16]);
    let lo = Ipv4Addr::LOCALHOST;
    for (family, src, dst, local) in [
        (AF_INET, v4(EXT), v4(PEER), false),
        (AF_INET, v4(lo), v4(lo), true),
        (
            AF_INET,
            v4(Ipv4Addr::new(127, 0, 0, 1)),
            v4(Ipv4Addr::new(127, 1, 2, 3)),
            true,
        ),
        // To one of the VM's own addresses: routed over lo.
        (AF_INET, v4(EXT), v4(EXT), true),
        (AF_INET6, v6("2001:db8::1"), v6("2001:db8::2"), false),
        (AF_INET6, v6("::1"), v6("::1"), true),
        (AF_INET6, v6("2001:db8::1"), v6("2001:db8::1"), true),
        (
            AF_INET6,
            v6("::ffff:127.0.0.1"),
            v6("::ffff:127.0.0.1"),
            true,
        ),
        (
            AF_INET6,
            v6("::ffff:10.0.0.5"),
            v6("::ffff:93.184.216.34"),
            false,
        ),
        (
            AF_INET6,
            v6("::ffff:10.0.0.5"),
            v6("::ffff:127.0.0.1"),
            true,
        ),
    ] {
        assert_eq!(
            is_local_traffic(family, &src, &dst),
            local,
            "{family} {src:?} {dst:?}"
        );
    }
}

/// The real kernel: a loopback connection that moved known bytes is in the dump, with this
/// process's inode, its cookie, and counters at least the bytes moved.
#[test]
#[ignore = "needs root (NETLINK_SOCK_DIAG); scripts/test.sh runs it"]
fn real_kernel_dump_sees_our_connection() {
    // A missing interface fails loudly: a skip must be visible, never a pass.
    let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG: run as root on Linux");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let payload = vec![7u8; 300_000];
    let writer = std::thread::spawn(move || {
        client.write_all(&payload).expect("write");
        client
    });
    let mut got = vec![0u8; 300_000];
    server.read_exact(&mut got).expect("read");
    let _client = writer.join().expect("join");

    let server_inode = socket_inode_of(&server).expect("server inode");
    let client_inode = socket_inode_of(&_client).expect("client inode");

    let mut out = Vec::new();
    diag.dump(&mut out).expect("dump");
    let server_sock = out
        .iter()
        .find(|s| s.inode == server_inode)
        .expect("server socket");
    let client_sock = out
        .iter()
        .find(|s| s.inode == client_inode)
        .expect("client socket");
    assert!(server_sock.loopback && client_sock.loopback);
    assert_eq!(server_sock.bytes_received, 300_000);
    assert_eq!(client_sock.bytes_sent, 300_000);
    assert_eq!(client_sock.bytes_received, 0);
    assert_ne!(server_sock.cookie, client_sock.cookie);
    // The cookie is stable across dumps.
    let mut again = Vec::new();
    diag.dump(&mut again).expect("second dump");
    let server_again = again
        .iter()
        .find(|s| s.inode == server_inode)
        .expect("server socket");
    assert_eq!(server_again.cookie, server_sock.cookie);
}

/// The real kernel accepts the filter (an invalid one fails the dump with `EINVAL`), leaves
/// out a loopback connection, and keeps a connection to this host's own non-loopback address
/// (loopback to the agent too, but only after the dump).
#[test]
#[ignore = "needs root (NETLINK_SOCK_DIAG); scripts/test.sh runs it"]
fn real_kernel_filter_leaves_out_loopback_only() {
    let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG: run as root on Linux");
    let inode_of = |s: &TcpStream| socket_inode_of(s).expect("socket inode");
    let conns = test_connections();
    let (lo_client, lo6_client, own_client) = (&conns.lo, &conns.lo6, &conns.own);

    let mut all = Vec::new();
    diag.dump(&mut all).expect("dump");
    let mut filtered = Vec::new();
    diag.dump_without_loopback(&mut filtered)
        .expect("the kernel accepts the filter");
    let has = |v: &[TcpSocket], inode: u32| v.iter().any(|s| s.inode == inode);
    assert!(has(&all, inode_of(lo_client)));
    assert!(!has(&filtered, inode_of(lo_client)));
    if let Some(c) = &lo6_client {
        assert!(has(&all, inode_of(c)));
        assert!(!has(&filtered, inode_of(c)));
    }
    if let Some(c) = &own_client {
        assert!(
            has(&filtered, inode_of(c)),
            "a non-127 connection is dumped"
        );
    }
    assert!(filtered.len() < all.len());
}

/// The real kernel refuses a filter its bytecode audit rejects (`EINVAL`, as an old or
/// hardened kernel may refuse ours): the one-walk request fails first (taken for the request
/// type's refusal), then the per-family one; `dump_without_loopback` then dumps unfiltered, in
/// one walk again, now and on later calls, instead of failing the tick's network attribution.
#[test]
#[ignore = "needs root (NETLINK_SOCK_DIAG); scripts/test.sh runs it"]
fn real_kernel_refusing_the_filter_falls_back_to_unfiltered_dumps() {
    // An op code the kernel does not know (inet_diag_bc_audit: EINVAL).
    fn refused(family: u8) -> Vec<u8> {
        let mut bc = loopback_bytecode(family);
        bc[0] = 0xff;
        bc
    }
    let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG: run as root on Linux");
    diag.loopback_filter = refused;
    let lo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let lo_client = TcpStream::connect(lo.local_addr().expect("addr")).expect("connect");
    let inode = socket_inode_of(&lo_client).expect("socket inode");
    let mut out = Vec::new();
    let direct = diag
        .dump_filtered(&mut out, true)
        .expect_err("the kernel refuses");
    assert_eq!(direct.raw_os_error(), Some(libc::EINVAL), "{direct}");
    assert!(!diag.filter_refused);
    assert!(
        diag.one_walk_refused,
        "EINVAL is first taken for the one-walk request's"
    );
    for round in 0..2 {
        diag.dump_without_loopback(&mut out)
            .unwrap_or_else(|e| panic!("round {round}: the fallback dumps: {e}"));
        assert!(diag.filter_refused);
        assert!(
            !diag.one_walk_refused,
            "round {round}: unfiltered, one walk works"
        );
        assert!(
            out.iter().any(|s| s.inode == inode && s.loopback),
            "round {round}: unfiltered, the loopback connection is in the dump"
        );
    }
}

#[test]
fn a_kernel_without_byte_counters_fails_the_dump_as_unsupported() {
    // A 3.10 kernel's 104-byte tcp_info: the whole dump is unmeasurable, not a dump of 0 bytes.
    let msg = Msg::v4(EXT, PEER, 1, 1, &tcp_info(104, 0, 0, 0)).payload();
    let mut d = Vec::new();
    d.extend_from_slice(&((NLMSG_HDRLEN + msg.len()) as u32).to_ne_bytes());
    d.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    d.extend_from_slice(&NLM_F_DUMP.to_ne_bytes());
    d.extend_from_slice(&9u32.to_ne_bytes());
    d.extend_from_slice(&0u32.to_ne_bytes());
    d.extend_from_slice(&msg);
    let mut out = Vec::new();
    let err = parse_datagram(&d, 9, &mut out).expect_err("unsupported");
    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    assert!(err.to_string().contains("Linux 4.1"), "{err}");
    assert!(out.is_empty());
    // A 4.1-era tcp_info (136 bytes) parses.
    let ok = Msg::v4(EXT, PEER, 1, 1, &tcp_info(136, 5, 10, 20)).payload();
    let mut d2 = d[..NLMSG_HDRLEN].to_vec();
    d2[0..4].copy_from_slice(&((NLMSG_HDRLEN + ok.len()) as u32).to_ne_bytes());
    d2.extend_from_slice(&ok);
    parse_datagram(&d2, 9, &mut out).expect("parses");
    assert_eq!((out[0].bytes_received, out[0].bytes_sent), (10, 5));
}

#[test]
fn one_walk_request_layout() {
    for no_loopback in [false, true] {
        let r = request_both_families(5, no_loopback);
        assert_eq!(u32_at(&r, 0) as usize, r.len(), "nlmsg_len");
        assert_eq!(u16_at(&r, 4), TCPDIAG_GETSOCK);
        assert_eq!(u16_at(&r, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&r, 8), 5, "seq");
        let body = &r[NLMSG_HDRLEN..NLMSG_HDRLEN + REQ_COMPAT_LEN];
        assert_eq!(body[0], 0, "family: both (the kernel sets AF_UNSPEC)");
        assert_eq!(body[3], 1 << (INET_DIAG_INFO - 1), "tcp_info asked for");
        assert!(body[4..52].iter().all(|&b| b == 0), "sockid: every socket");
        assert_eq!(u32_at(body, 52), STATES);
        assert_eq!(u32_at(body, 56), 0, "idiag_dbs");
        let attr = &r[NLMSG_HDRLEN + REQ_COMPAT_LEN..];
        if no_loopback {
            // The IPv6 request's filter: both conditions, so it serves both families.
            assert_eq!(attr, &request_without_loopback(AF_INET6, 5)[REQUEST_LEN..]);
        } else {
            assert!(attr.is_empty());
        }
    }
    // Its answers carry the request's type, and parse as the per-family ones.
    let info = tcp_info(232, 5, 1_000, 2_000);
    let mut d = nlmsg(
        TCPDIAG_GETSOCK,
        3,
        &Msg::v4(EXT, PEER, 1, 11, &info).payload(),
    );
    d.extend(done(3));
    let mut out = Vec::new();
    assert_eq!(parse_datagram(&d, 3, &mut out).unwrap(), Progress::Done);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].inode, 11);
}

/// The real kernel: the one-walk dump (both families, filtered or not) finds the same sockets
/// as one dump per family.
#[test]
#[ignore = "needs root (NETLINK_SOCK_DIAG); scripts/test.sh runs it"]
fn real_kernel_one_walk_equals_one_dump_per_family() {
    let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG: run as root on Linux");
    let conns = test_connections();
    let (c4, c6, own_client) = (&conns.lo, &conns.lo6, &conns.own);
    let cookies = |v: &[TcpSocket]| {
        let mut c: Vec<u64> = v.iter().map(|s| s.cookie).collect();
        c.sort_unstable();
        c
    };
    for no_loopback in [false, true] {
        let mut one = Vec::new();
        diag.dump_filtered(&mut one, no_loopback)
            .expect("one-walk dump");
        assert!(
            !diag.one_walk_refused,
            "this kernel takes the one-walk request"
        );
        let mut per_family = Vec::new();
        diag.dump_family(AF_INET, &mut per_family, no_loopback)
            .expect("IPv4 dump");
        diag.dump_family(AF_INET6, &mut per_family, no_loopback)
            .expect("IPv6 dump");
        // Other sockets (other processes, other tests in this process) may come and go
        // between the dumps: compare this test's own.
        let ours: Vec<u32> = [Some(c4), c6.as_ref(), own_client.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(socket_inode_of)
            .collect();
        let mine = |v: &[TcpSocket]| {
            let v: Vec<TcpSocket> = v
                .iter()
                .filter(|s| ours.contains(&s.inode))
                .copied()
                .collect();
            cookies(&v)
        };
        assert_eq!(mine(&one), mine(&per_family), "no_loopback: {no_loopback}");
        if !no_loopback {
            assert_eq!(mine(&one).len(), ours.len(), "our connections are dumped");
        }
    }
}

#[test]
fn lookup_request_layout() {
    let m = Msg::v4(EXT, PEER, 0xAB_0000_0001, 5, &[]);
    let id = m.sock_id();
    let r = lookup_request(&id, 42);
    assert_eq!(u32_at(&r, 0) as usize, REQUEST_LEN);
    assert_eq!(u16_at(&r, 4), SOCK_DIAG_BY_FAMILY);
    // No NLM_F_DUMP: one socket, found in the hash; acknowledged.
    assert_eq!(u16_at(&r, 6), NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(u32_at(&r, 8), 42);
    let q = NLMSG_HDRLEN;
    assert_eq!((r[q], r[q + 1]), (AF_INET, libc::IPPROTO_TCP as u8));
    assert_eq!(r[q + 2], 1 << (INET_DIAG_INFO - 1));
    assert_eq!(&r[q + 8..q + 56], &id.id[..]);
    assert_eq!(&r[q + 8..q + 10], &40000u16.to_be_bytes());
    assert_eq!(&r[q + 48..q + 56], &0xAB_0000_0001u64.to_ne_bytes());

    // A dual-stack socket's IPv4 connection (AF_INET6, both addresses IPv4-mapped) is asked
    // for as AF_INET, the addresses in IPv4 form; a true IPv6 one as it is.
    let mapped = |a: Ipv4Addr| a.to_ipv6_mapped();
    let m6 = Msg::v6(mapped(EXT), mapped(PEER), 9, 6, &[]);
    let r = lookup_request(&m6.sock_id(), 43);
    assert_eq!(r[q], AF_INET);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&EXT.octets());
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&PEER.octets());
    assert_eq!(&r[q + 12..q + 28], &src);
    assert_eq!(&r[q + 28..q + 44], &dst);
    assert_eq!(&r[q + 8..q + 12], &m6.sock_id().id[..4], "ports kept");
    assert_eq!(&r[q + 48..q + 56], &9u64.to_ne_bytes(), "cookie kept");
    let v6 = Msg::v6(
        "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        "2001:db8::2".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        9,
        6,
        &[],
    );
    let r = lookup_request(&v6.sock_id(), 44);
    assert_eq!((r[q], &r[q + 8..q + 56]), (AF_INET6, &v6.sock_id().id[..]));
}

/// An `NLMSG_ERROR` answering request `seq` with `errno` (0: an acknowledgement).
fn ack(seq: u32, errno: i32) -> Vec<u8> {
    let mut p = (-errno).to_ne_bytes().to_vec();
    p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // the request's header, echoed
    nlmsg(NLMSG_ERROR, seq, &p)
}

#[test]
fn lookup_answers_found_gone_and_refused() {
    let info = tcp_info(232, 5, 1_000, 2_000);
    let found = Msg::v4(EXT, PEER, 7, 70, &info);
    // Requests 10, 11, 12: found (message + ack), gone, cookie mismatch (gone too); 9 and 13
    // are another exchange's.
    let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 10, &found.payload());
    d.extend(ack(9, 0));
    d.extend(ack(10, 0));
    d.extend(ack(11, libc::ENOENT));
    d.extend(ack(12, libc::ESTALE));
    d.extend(ack(13, 0));
    let mut out = Vec::new();
    assert_eq!(parse_lookup_datagram(&d, 10, 3, &mut out).ok(), Some(3));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].cookie, out[0].inode), (7, 70));
    assert_eq!(out[0].id, found.sock_id());
    assert_eq!((out[0].bytes_received, out[0].bytes_sent), (1_000, 2_000));
    // Any other errno: the kernel does not answer lookups.
    let refused = parse_lookup_datagram(&ack(10, libc::EOPNOTSUPP), 10, 1, &mut out);
    assert_eq!(
        refused.err().and_then(|e| e.raw_os_error()),
        Some(libc::EOPNOTSUPP)
    );
    // Sequence numbers wrap.
    let mut out = Vec::new();
    let wrapped = [ack(u32::MAX, libc::ENOENT), ack(0, libc::ENOENT)].concat();
    assert_eq!(
        parse_lookup_datagram(&wrapped, u32::MAX, 2, &mut out).ok(),
        Some(2)
    );
    assert!(parse_lookup_datagram(&[16, 0, 0, 0, 2, 0], 1, 1, &mut out).is_ok());
    assert!(
        parse_lookup_datagram(
            &[99, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            1,
            1,
            &mut out
        )
        .is_err()
    );
}

#[test]
fn tcp_opens_from_snmp() {
    let snmp = b"Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab\n\
Tcp: 1 200 120000 -1 206218 205007 920 141336 3\n\
Udp: InDatagrams NoPorts\nUdp: 5 6\n";
    assert_eq!(parse_tcp_opens(snmp), Some(206_218 + 205_007));
    assert_eq!(parse_tcp_opens(b"Tcp: ActiveOpens\nTcp: 5\n"), None);
    assert_eq!(parse_tcp_opens(b"Tcp: ActiveOpens PassiveOpens\n"), None);
    assert_eq!(
        parse_tcp_opens(b"Tcp: ActiveOpens PassiveOpens\nTcp: x 1\n"),
        None
    );
    assert_eq!(parse_tcp_opens(b""), None);
}

#[test]
fn lookups_are_bounded_by_what_a_walk_costs() {
    const GIB: u64 = 1 << 30;
    // 262,144 buckets on 32 GiB (24 GiB rounds up the same way in the kernel).
    assert_eq!(lookup_limit(32 * GIB), 512);
    assert_eq!(lookup_limit(GIB), 16);
    assert_eq!(lookup_limit(0), 16);
    assert_eq!(lookup_limit(u64::MAX), 4096);
}

/// Runs `f` on a thread in a new network namespace of its own (only `lo`, up): no other test
/// or process opens TCP sockets there, so its opens count moves only with `f`'s connections.
#[allow(unsafe_code)]
fn in_own_net_namespace(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's namespace; no
        // memory is passed.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): run as root");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip (iproute2)");
        assert!(up.success(), "ip link set lo up");
        f();
    })
    .join()
    .expect("test thread");
}

/// Bytes moved both ways over one established connection.
fn exchange(a: &mut TcpStream, b: &mut TcpStream, n: usize) {
    a.write_all(&vec![1u8; n]).expect("write");
    let mut got = vec![0u8; n];
    b.read_exact(&mut got).expect("read");
    b.write_all(&got[..n / 2]).expect("write back");
    a.read_exact(&mut got[..n / 2]).expect("read back");
}

/// The real kernel, in a namespace of the test's own: a walk is trusted once the opens count
/// has stood still since the tick before; then, without a new socket, the answer comes from
/// exact lookups (several sends' worth, IPv4, IPv6 and IPv4-mapped), with the walk's sockets
/// and their moved counters; closed connections drop out; a new one makes the next answers
/// walks, which find it; past a minute a walk comes anyway; lookups and a walk agree.
#[test]
#[ignore = "needs root (unshare, NETLINK_SOCK_DIAG); scripts/test.sh runs it"]
fn real_kernel_quiet_namespace_is_answered_by_lookups() {
    in_own_net_namespace(|| {
        let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG");
        let pair = |l: &TcpListener, to: std::net::SocketAddr| {
            let c = TcpStream::connect(to).expect("connect");
            let (s, _) = l.accept().expect("accept");
            (c, s)
        };
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let v4_at = v4.local_addr().expect("addr");
        let mut pairs: Vec<(TcpStream, TcpStream)> = (0..10).map(|_| pair(&v4, v4_at)).collect();
        // IPv6, and a dual-stack listener's IPv4 connection (its accepted socket is AF_INET6
        // with IPv4-mapped addresses), where the namespace has IPv6.
        let dual = TcpListener::bind("[::]:0").ok();
        if let Some(l) = &dual {
            let port = l.local_addr().expect("addr").port();
            pairs.push(pair(l, (Ipv6Addr::LOCALHOST, port).into()));
            pairs.push(pair(l, (Ipv4Addr::LOCALHOST, port).into()));
        } else {
            eprintln!("no IPv6 in this namespace: the IPv6 and IPv4-mapped lookups are not run");
        }
        let sockets = 2 * pairs.len();
        assert!(sockets > LOOKUPS_PER_SEND, "several sends' worth");
        let inode = |s: &TcpStream| socket_inode_of(s).expect("inode");
        let by_inode =
            |v: &[TcpSocket], s: &TcpStream| v.iter().find(|x| x.inode == inode(s)).copied();
        let mut out = Vec::new();
        let mut answer = |diag: &mut SockDiag| {
            diag.dump(&mut out).expect("answer");
            out.clone()
        };

        // The first walk is not trusted (no earlier count); the second is.
        let walked = answer(&mut diag);
        assert_eq!(walked.len(), sockets, "{walked:?}");
        answer(&mut diag);
        assert_eq!(diag.lookups_since_walk, 0);

        for (c, s) in &mut pairs {
            exchange(c, s, 100_000);
        }
        let looked = answer(&mut diag);
        assert_eq!(
            diag.lookups_since_walk, 1,
            "no socket opened: answered by lookups"
        );
        assert_eq!(looked.len(), sockets);
        for (c, s) in &pairs {
            let (c1, s1) = (
                by_inode(&looked, c).expect("c"),
                by_inode(&looked, s).expect("s"),
            );
            assert_eq!((c1.bytes_sent, c1.bytes_received), (100_000, 50_000));
            assert_eq!((s1.bytes_received, s1.bytes_sent), (100_000, 50_000));
            assert_eq!(c1.cookie, by_inode(&walked, c).expect("walked").cookie);
        }
        if dual.is_some() {
            let mapped = by_inode(&looked, &pairs[pairs.len() - 1].1).expect("mapped socket");
            assert_eq!(i32::from(mapped.id.family), libc::AF_INET6);
        }

        // Closed connections: one end in TIME_WAIT (no counters), the other closed: both gone.
        let closed = pairs.split_off(8);
        drop(closed);
        let left = 2 * pairs.len();
        let mut after = Vec::new();
        for _ in 0..500 {
            after = answer(&mut diag);
            if after.len() == left {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(after.len(), left, "{after:?}");
        assert!(diag.lookups_since_walk >= 2);

        // A new connection moves the opens count: walks, which find it, until the count has
        // stood still for a tick.
        let e = TcpStream::connect(v4_at).expect("connect");
        let (_e_server, _) = v4.accept().expect("accept");
        let next = answer(&mut diag);
        assert_eq!(diag.lookups_since_walk, 0);
        assert!(by_inode(&next, &e).is_some());
        assert_eq!(next.len(), left + 2);
        answer(&mut diag);
        assert_eq!(
            diag.lookups_since_walk, 0,
            "the count had moved since the tick before"
        );

        // Lookups and a walk give the same sockets and counters.
        let mut by_lookup = answer(&mut diag);
        assert_eq!(diag.lookups_since_walk, 1);
        let mut by_walk = Vec::new();
        diag.walk(&mut by_walk, false).expect("walk");
        let key = |v: &mut Vec<TcpSocket>| v.sort_unstable_by_key(|s| s.cookie);
        key(&mut by_lookup);
        key(&mut by_walk);
        assert_eq!(by_lookup, by_walk);

        // A minute after the last walk, a walk comes however quiet the namespace.
        diag.walk_every = std::time::Duration::ZERO;
        answer(&mut diag);
        assert_eq!(diag.lookups_since_walk, 0);
    });
}
