use super::*;

const NOW: i64 = 1_800_000_000;

fn default() -> LogFormat {
    LogFormat::compile(DEFAULT_LOG_FORMAT).unwrap()
}

fn line(time: &str, bytes: u64, host: &str, cache: &str) -> String {
    format!(
        r#"203.0.113.9 - - [{time}] "GET /img/a.png?x=1 HTTP/1.1" 200 {bytes} "https://ref.example/" "Mozilla/5.0 (X11; Linux x86_64) \x22quoted\x22" {host} {cache}"#
    )
}

#[test]
fn default_format_parses_combined_plus_host_and_cache_status() {
    let f = default();
    let e = f
        .parse(
            &line("14/Dec/2016:07:00:00 +0800", 1234, "www.a.com", "HIT"),
            NOW,
        )
        .unwrap();
    assert_eq!(
        e,
        Entry {
            domain: "www.a.com".into(),
            time: 1_481_670_000,
            bytes: 1234,
            hit: true
        }
    );
    // 2016-12-14 07:00 +0800 = 2016-12-13 23:00 UTC.
    assert_eq!(e.time, 1_481_670_000);
    let e = f
        .parse(
            &line("14/Dec/2016:07:00:00 +0800", 5, "WWW.B.com.", "MISS"),
            NOW,
        )
        .unwrap();
    assert_eq!(e.domain, "www.b.com");
    assert!(!e.hit);
    // A CRLF line ending is tolerated.
    let crlf = line("14/Dec/2016:07:00:00 +0800", 5, "b.com", "-") + "\r";
    assert!(f.parse(&crlf, NOW).is_ok());
}

#[test]
fn cache_statuses() {
    let f = default();
    let t = "01/Mar/2024:10:00:00 +0000";
    for (status, hit) in [
        ("HIT", true),
        ("hit", true),
        ("STALE", true),
        ("UPDATING", true),
        ("REVALIDATED", true),
        ("MISS", false),
        ("BYPASS", false),
        ("EXPIRED", false),
        ("-", false),
    ] {
        let e = f.parse(&line(t, 1, "a.com", status), NOW).unwrap();
        assert_eq!(e.hit, hit, "{status}");
    }
}

#[test]
fn malformed_lines_are_refused_with_a_reason() {
    let f = default();
    let t = "01/Mar/2024:10:00:00 +0000";
    assert_eq!(f.parse("garbage", NOW), Err(LineError::Layout));
    assert_eq!(f.parse("", NOW), Err(LineError::Layout));
    assert_eq!(f.parse(&line(t, 1, "-", "HIT"), NOW), Err(LineError::Host));
    assert_eq!(
        f.parse(&line(t, 1, "a,b.com", "HIT"), NOW),
        Err(LineError::Host)
    );
    let bad_bytes = line(t, 1, "a.com", "HIT").replace(" 200 1 ", " 200 x1 ");
    assert_eq!(f.parse(&bad_bytes, NOW), Err(LineError::Bytes));
    let bad_status = line(t, 1, "a.com", "HIT").replace(" 200 1 ", " 2x0 1 ");
    assert_eq!(f.parse(&bad_status, NOW), Err(LineError::Status));
    for bad_time in [
        "01/Foo/2024:10:00:00 +0000",
        "32/Mar/2024:10:00:00 +0000",
        "01/Mar/2024:25:00:00 +0000",
        "01/Mar/2024:10:00:00",
        "01/Mar/2024:10:00:00 0800",
        "01/Mar/1999:10:00:00 +0000",
        "01/Mar/2099:10:00:00 +0000",
    ] {
        assert_eq!(
            f.parse(&line(bad_time, 1, "a.com", "HIT"), NOW),
            Err(LineError::Time),
            "{bad_time}"
        );
    }
    // Text after the last variable belongs to it; a missing field breaks the layout.
    let short = r#"1.2.3.4 - - [01/Mar/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 1"#;
    assert_eq!(f.parse(short, NOW), Err(LineError::Layout));
}

#[test]
fn time_local_offsets() {
    assert_eq!(
        parse_time_local("01/Jan/2024:00:00:00 +0000"),
        Some(1_704_067_200)
    );
    assert_eq!(
        parse_time_local("01/Jan/2024:08:00:00 +0800"),
        Some(1_704_067_200)
    );
    assert_eq!(
        parse_time_local("31/Dec/2023:19:00:00 -0500"),
        Some(1_704_067_200)
    );
    assert_eq!(
        parse_time_local("01/Jan/2024:05:45:00 +0545"),
        Some(1_704_067_200)
    );
    assert_eq!(parse_time_local("29/Feb/2023:00:00:00 +0000"), None);
    assert_eq!(parse_time_local("1/Jan/2024:00:00:00 +0000"), None);
}

#[test]
fn custom_formats() {
    // bytes_sent wins over body_bytes_sent; http_host loses its port; msec and iso8601 times.
    let f = LogFormat::compile(
        "${msec}|$http_host|$body_bytes_sent|$bytes_sent|$upstream_cache_status|$request_time",
    )
    .unwrap();
    let e = f
        .parse("1700000000.123|Img.A.com:8080|10|350|STALE|0.001", NOW)
        .unwrap();
    assert_eq!(
        e,
        Entry {
            domain: "img.a.com".into(),
            time: 1_700_000_000,
            bytes: 350,
            hit: true
        }
    );
    let f = LogFormat::compile(
        "$time_iso8601 $host $status $body_bytes_sent $upstream_cache_status \"$http_user_agent\"",
    )
    .unwrap();
    let e = f
        .parse(
            "2024-03-01T10:00:00+08:00 a.com 206 99 MISS \"curl/8 (x)\"",
            NOW,
        )
        .unwrap();
    assert_eq!(e.time, 1_709_258_400);
    assert_eq!(e.bytes, 99);
    // Unknown variables match text and are ignored.
    let f = LogFormat::compile("$foo $host $bar [$time_local] $bytes_sent $upstream_cache_status")
        .unwrap();
    assert!(
        f.parse("x a.com y [01/Mar/2024:10:00:00 +0000] 5 HIT", NOW)
            .is_ok()
    );
}

#[test]
fn bad_formats_are_refused() {
    assert_eq!(LogFormat::compile(""), Err(FormatError::Empty));
    assert_eq!(
        LogFormat::compile("$host$status"),
        Err(FormatError::Adjacent("host".into()))
    );
    assert!(matches!(
        LogFormat::compile("$ $host"),
        Err(FormatError::BadVariable(0))
    ));
    assert!(matches!(
        LogFormat::compile("${host"),
        Err(FormatError::BadVariable(0))
    ));
    assert!(matches!(
        LogFormat::compile("$time_local $body_bytes_sent $upstream_cache_status"),
        Err(FormatError::Missing(m)) if m.contains("$host")
    ));
    assert!(matches!(
        LogFormat::compile("$time_local $host $upstream_cache_status"),
        Err(FormatError::Missing(m)) if m.contains("bytes")
    ));
    assert!(matches!(
        LogFormat::compile("$host $body_bytes_sent $upstream_cache_status"),
        Err(FormatError::Missing(m)) if m.contains("time_local")
    ));
    assert!(matches!(
        LogFormat::compile("$time_local $host $body_bytes_sent"),
        Err(FormatError::Missing(m)) if m.contains("upstream_cache_status")
    ));
}
