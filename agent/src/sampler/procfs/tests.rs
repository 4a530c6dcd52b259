//! Parsers of the raw `/proc` formats, on literal file contents.

use std::time::Duration;

use super::*;

/// A stat line with the given comm and the fields a tick reads.
fn stat_line(pid: u32, comm: &str, utime: u64, stime: u64, start: u64, rss: &str) -> String {
    format!(
        "{pid} ({comm}) S 1 1 1 0 -1 4194304 10 0 0 0 {utime} {stime} 3 4 20 0 1 0 {start} 123456 {rss} \
         18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    )
}

#[test]
fn pid_stat_plain() {
    let line = stat_line(42, "sshd", 7, 5, 9000, "321");
    let st = parse_pid_stat(line.as_bytes()).expect("parses");
    assert_eq!(st.comm, b"sshd");
    assert_eq!(st.cpu_ticks, 12);
    assert_eq!(st.start_ticks, 9000);
    assert_eq!(st.rss_pages, 321);
}

#[test]
fn pid_stat_comm_with_parens_and_spaces() {
    // A process may call itself anything: the last ')' ends comm.
    for comm in ["a) (b", ") (", "x) S 1 2 (y", "((", "))", " ", ""] {
        let line = stat_line(7, comm, 1, 2, 33, "4");
        let st = parse_pid_stat(line.as_bytes()).unwrap_or_else(|| panic!("{comm:?} parses"));
        assert_eq!(st.comm, comm.as_bytes(), "{comm:?}");
        assert_eq!(
            (st.cpu_ticks, st.start_ticks, st.rss_pages),
            (3, 33, 4),
            "{comm:?}"
        );
    }
}

#[test]
fn pid_stat_negative_rss_is_zero_and_malformed_is_none() {
    let line = stat_line(1, "z", 0, 0, 1, "-1");
    assert_eq!(
        parse_pid_stat(line.as_bytes()).map(|st| st.rss_pages),
        Some(0)
    );
    assert_eq!(parse_pid_stat(b""), None);
    assert_eq!(parse_pid_stat(b"1 (x"), None);
    assert_eq!(parse_pid_stat(b"1 (x) S 1 2 3"), None, "truncated");
    assert_eq!(parse_pid_stat(b"1 x) S ("), None, "')' before '('");
    let bad = stat_line(1, "x", 0, 0, 77, "9").replace(" 77 123456", " 7x 123456");
    assert_ne!(bad, stat_line(1, "x", 0, 0, 77, "9"));
    assert_eq!(
        parse_pid_stat(bad.as_bytes()),
        None,
        "non-numeric start time"
    );
}

#[test]
fn pid_io() {
    let io = b"rchar: 100\nwchar: 200\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
    assert_eq!(
        parse_pid_io(io),
        Some(IoCounters {
            read_bytes: 4096,
            write_bytes: 8192
        })
    );
    assert_eq!(parse_pid_io(b"rchar: 1\n"), None);
    assert_eq!(parse_pid_io(b""), None);
}

/// `(comm, cmdline, name)`.
type CmdlineCase = (&'static [u8], &'static [u8], Option<&'static [u8]>);

#[test]
fn cmdline_names() {
    let cases: &[CmdlineCase] = &[
        (
            b"systemd-journal",
            b"/lib/systemd/systemd-journald\0",
            Some(b"systemd-journald"),
        ),
        (
            b"systemd-journal",
            b"systemd-journald\0--flag\0",
            Some(b"systemd-journald"),
        ),
        // Kernel threads and zombies: empty cmdline.
        (b"kworker/0:1-eve", b"", None),
        // A rewritten title that does not match comm.
        (b"postgres-someth", b"postgres: checkpointer\0", None),
        (b"sshd-session-xy", b"sshd: root@pts/0", None),
        (b"abc", b"/x/\0", None),
        // setproctitle: the whole title is argv[0], as one string.
        (
            b"chromium-browse",
            b"chromium-browser --type=renderer --enable-pinch",
            Some(b"chromium-browser"),
        ),
        (
            b"chromium-browse",
            b"chromium-browser --type=renderer --enable-pinch\0\0\0\0",
            Some(b"chromium-browser"),
        ),
        (
            b"chromium-browse",
            b"/usr/lib/chromium/chromium-browser --type=renderer --path=/a/b\0",
            Some(b"chromium-browser"),
        ),
        // Separate arguments: argv[0] is the path, spaces and all.
        (
            b"my long progra",
            b"/opt/My App/bin/my long program\0--flag\0",
            Some(b"my long program"),
        ),
        // comm naming a directory on the way is skipped.
        (
            b"chromium-browse",
            b"/opt/chromium-browser/chromium-browser-beta\0-x\0",
            Some(b"chromium-browser-beta"),
        ),
        // comm only in the middle of a word is not the program.
        (b"chromium-browse", b"xchromium-browser --a", None),
    ];
    for &(comm, cmdline, want) in cases {
        assert_eq!(
            name_from_cmdline(comm, cmdline),
            want,
            "{:?}",
            String::from_utf8_lossy(cmdline)
        );
    }
}

#[test]
fn stat_summary() {
    let data = b"cpu  100 5 50 1000 20 3 2 1 40 0\ncpu0 50 2 25 500 10 1 1 0 20 0\ncpu1 50 3 25 500 10 2 1 1 20 0\n\
intr 12345 1 2 3\nctxt 99\nbtime 1700000000\nprocesses 5000\n";
    let s = parse_stat(data).expect("parses");
    assert_eq!(s.online_cpus, 2);
    assert_eq!(s.btime, Some(1_700_000_000));
    assert_eq!(s.forks_total, Some(5000));
    // Guest time (40) is already inside user: not added again.
    assert_eq!(s.cpu.total, 100 + 5 + 50 + 1000 + 20 + 3 + 2 + 1);
    assert_eq!(s.cpu.idle, 1020);
    // Old kernels print only four fields.
    let old = parse_stat(b"cpu  1 2 3 4\n").expect("parses");
    assert_eq!(
        (
            old.cpu.total,
            old.cpu.idle,
            old.online_cpus,
            old.btime,
            old.forks_total
        ),
        (10, 4, 0, None, None)
    );
    assert_eq!(parse_stat(b"cpu0 1 2 3 4\n"), None);
    assert_eq!(parse_stat(b"cpu  1 2\n"), None);
}

#[test]
fn meminfo() {
    let m = parse_meminfo(b"MemTotal:       2000 kB\nMemFree:         100 kB\nMemAvailable:    500 kB\nBuffers: 1 kB\n")
        .expect("parses");
    assert_eq!(
        (m.total_bytes, m.available_bytes),
        (2000 * 1024, 500 * 1024)
    );
    assert!(m.available_reported);
    // Before MemAvailable existed (Linux < 3.14): free + buffers + cached + reclaimable slab.
    let old = parse_meminfo(
        b"MemTotal: 2000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\nSReclaimable: 30 kB\n",
    )
    .expect("parses");
    assert_eq!(old.available_bytes, 450 * 1024);
    assert!(!old.available_reported);
    // Never more than MemTotal.
    let capped =
        parse_meminfo(b"MemTotal: 100 kB\nMemFree: 90 kB\nCached: 90 kB\n").expect("parses");
    assert_eq!(capped.available_bytes, 100 * 1024);
    assert_eq!(parse_meminfo(b"MemFree: 1 kB\n"), None);
}

#[test]
fn uptime() {
    assert_eq!(
        parse_uptime(b"12345.67 2345.00\n"),
        Some(Duration::from_millis(12_345_670))
    );
    assert_eq!(parse_uptime(b"5 1\n"), Some(Duration::from_secs(5)));
    assert_eq!(parse_uptime(b"0.5"), Some(Duration::from_millis(500)));
    assert_eq!(parse_uptime(b"x"), None);
    assert_eq!(parse_uptime(b""), None);
}

#[test]
fn diskstats_lines() {
    let data = b"   7       0 loop0 1 2 3 4 5 6 7 8 0 0 0\n 254       0 vda 13955 4844 2976602 14875 2662 21388 2629880 4700 0 5004 19836 4165 43 136848 256 107 4\n 254       1 vda1 1 0 8 0 2 0 16 0 0 0 0\nshort line\n";
    let got: Vec<_> = diskstats(data).collect();
    assert_eq!(
        got,
        vec![
            (&b"loop0"[..], 3, 7),
            (&b"vda"[..], 2_976_602, 2_629_880),
            (&b"vda1"[..], 8, 16)
        ]
    );
}

#[test]
fn net_dev_lines() {
    let data = b"Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n  eth0: 97388383    5654    0    0    0     0          0         0   484879    3814    0    0    0     0       0          0\neth1:5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n";
    let got: Vec<_> = net_dev(data).collect();
    assert_eq!(
        got,
        vec![
            (&b"lo"[..], 3193, 3193),
            (&b"eth0"[..], 97_388_383, 484_879),
            (&b"eth1"[..], 5, 7)
        ]
    );
}

#[test]
fn cpu_lists() {
    let cases: &[(&[u8], Option<u32>)] = &[
        (b"0\n", Some(1)),
        (b"0-1\n", Some(2)),
        (b"0-3,5,7-8\n", Some(7)),
        (b"", None),
        (b"3-1", None),
        (b"x", None),
    ];
    for &(list, want) in cases {
        assert_eq!(
            parse_cpu_list(list),
            want,
            "{:?}",
            String::from_utf8_lossy(list)
        );
    }
}

#[test]
fn os_release() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            Some("Debian GNU/Linux 12 (bookworm)"),
        ),
        (
            "PRETTY_NAME='Alpine Linux v3.20'\n",
            Some("Alpine Linux v3.20"),
        ),
        ("PRETTY_NAME=Arch\n", Some("Arch")),
        ("PRETTY_NAME=\"Say \\\"hi\\\"\"\n", Some("Say \"hi\"")),
        ("PRETTY_NAME=\"\"\n", None),
        ("NAME=x\n", None),
    ];
    for &(text, want) in cases {
        assert_eq!(os_pretty_name(text).as_deref(), want, "{text:?}");
    }
}

#[test]
fn pids_and_numbers() {
    assert_eq!(parse_pid(b"1"), Some(1));
    assert_eq!(parse_pid(b"4194304"), Some(4_194_304));
    assert_eq!(parse_pid(b"self"), None);
    assert_eq!(parse_pid(b"99999999999"), None);
    assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_u64(b"18446744073709551616"), None);
    assert_eq!(parse_u64(b"-1"), None);
}

#[test]
fn pid_paths_are_built_in_place() {
    let mut p = PidPath::new(Path::new("/proc"));
    assert_eq!(p.get(1, b"stat"), Path::new("/proc/1/stat"));
    assert_eq!(p.get(4_194_304, b"io"), Path::new("/proc/4194304/io"));
    assert_eq!(p.get(0, b"cmdline"), Path::new("/proc/0/cmdline"));
    let mut q = PidPath::new(Path::new("/tmp/x/"));
    assert_eq!(q.get(12, b"io"), Path::new("/tmp/x/12/io"));
}

#[test]
fn read_buf_reads_whole_files_of_any_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("big");
    std::fs::write(&path, &big).expect("write");
    let small = dir.path().join("small");
    std::fs::write(&small, b"hello\n").expect("write");
    let mut buf = ReadBuf::default();
    assert_eq!(buf.read_all(&path).expect("read"), &big[..]);
    assert_eq!(buf.read_single(&path).expect("read"), &big[..]);
    assert_eq!(buf.read_all(&small).expect("read"), b"hello\n");
    assert_eq!(buf.read_single(&small).expect("read"), b"hello\n");
    let err = buf
        .read_all(&dir.path().join("missing"))
        .expect_err("missing");
    assert!(is_vanished(&err));
}

#[test]
fn a_kept_file_rereads_from_offset_zero_whatever_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, b"first\n").expect("write");
    let mut buf = ReadBuf::default();
    let (file, data) = buf.open_single(&path).expect("open");
    assert_eq!(data, b"first\n");
    assert_eq!(buf.reread_single(&file).expect("pread"), b"first\n");
    // Rewritten in place, larger than the buffer: read whole from 0 again.
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &big).expect("write");
    assert_eq!(buf.reread_single(&file).expect("pread"), &big[..]);
    std::fs::write(&path, b"").expect("write");
    assert_eq!(buf.reread_single(&file).expect("pread"), b"");
    assert!(is_vanished(
        &buf.open_single(&dir.path().join("missing"))
            .map(|(_, d)| d.len())
            .expect_err("missing")
    ));
}

#[test]
fn pid_stat_state_parent_children_threads() {
    // 42 (w) Z ppid=7 ... utime 3 stime 4 cutime 50 cstime 60 ... threads 3, rss 0.
    let line = "42 (w) Z 7 42 42 0 -1 4194304 10 0 0 0 3 4 50 60 20 0 3 0 900 0 0 \
                18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    let st = parse_pid_stat(line.as_bytes()).expect("parses");
    assert_eq!(
        (
            st.state,
            st.ppid,
            st.cpu_ticks,
            st.children_cpu_ticks,
            st.num_threads
        ),
        (b'Z', 7, 7, 110, 3)
    );
    assert_eq!((st.start_ticks, st.rss_pages), (900, 0));
}

#[test]
fn statm_resident() {
    assert_eq!(
        parse_statm_resident(b"1000 131072 50 1 0 20 0\n"),
        Some(131_072)
    );
    assert_eq!(parse_statm_resident(b"1000\n"), None);
}

#[test]
fn stat_steal_column() {
    let s = parse_stat(b"cpu  25 0 0 25 0 0 0 50 10 0\n").expect("parses");
    assert_eq!((s.cpu.total, s.cpu.idle, s.cpu.steal), (100, 25, Some(50)));
    let old = parse_stat(b"cpu  1 2 3 4 5 6 7\n").expect("parses");
    assert_eq!(old.cpu.steal, None);
}
