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

/// A default-format line with the given free-text fields.
fn line_with(user: &str, request: &str, referer: &str, agent: &str, host: &str) -> String {
    format!(
        r#"203.0.113.9 - {user} [01/Mar/2024:10:00:00 +0000] "{request}" 200 777 "{referer}" "{agent}" {host} HIT"#
    )
}

#[test]
fn remote_users_holding_the_formats_separators_are_counted() {
    let f = default();
    for user in [
        "a [b",
        "john doe",
        "[admin]",
        "a] [b",
        "x] [01/Mar/2024:10:00:00 +0000",
        "[01/Mar/2024:10:00:00 +0000] \\x22GET",
        " [ [ [",
        "-",
    ] {
        let e = f
            .parse(
                &line_with(user, "GET / HTTP/1.1", "-", "curl", "a.com"),
                NOW,
            )
            .unwrap_or_else(|err| panic!("{user:?}: {err}"));
        assert_eq!(
            (e.bytes, e.time, e.domain.as_str()),
            (777, 1_709_287_200, "a.com"),
            "{user:?}"
        );
    }
    // Requests and agents with spaces and brackets too.
    let e = f
        .parse(
            &line_with("u", "GET /a b [c] HTTP/1.1", "x] y", "M [x] 200 5", "a.com"),
            NOW,
        )
        .unwrap();
    assert_eq!(e.bytes, 777);
}

#[test]
fn a_hostile_line_exhausts_the_search_bound_not_the_cpu() {
    // Thousands of separators the backtracking could try: answered (refused) quickly.
    let f =
        LogFormat::compile("$a $b $c $d $e $host $bytes_sent $time_local $upstream_cache_status")
            .unwrap();
    let line = " ".repeat(5000);
    let started = std::time::Instant::now();
    assert!(f.parse(&line, NOW).is_err());
    let line = format!(
        "{} a.com 5 [01/Mar/2024:10:00:00 +0000] HIT",
        " x".repeat(3000)
    );
    assert!(f.parse(&line, NOW).is_err() || f.parse(&line, NOW).is_ok());
    // Generous: the bound is in steps; this only catches an unbounded search.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Text nginx may write inside a variable: printable ASCII except `"` and `\` (escaped as
    /// `\x22`, `\x5C`), plus such escapes; rich in the default format's separators.
    fn free_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => "[ -!#-\\[\\]-~]",
                2 => prop::sample::select(vec![" [", "] ", "] \"", "\" ", " \"", "[", "]", " - "])
                    .prop_map(|s| s.replace('"', "\\x22")),
                1 => Just("\\x22".to_owned()),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    fn domain() -> impl Strategy<Value = String> {
        ("[a-z][a-z0-9-]{0,8}[a-z0-9]", "[a-z]{2,6}").prop_map(|(a, b)| format!("{a}.{b}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn default_format_recovers_every_field(
            addr in "[0-9a-f.:]{1,20}",
            user in free_text(),
            request in free_text(),
            referer in free_text(),
            agent in free_text(),
            host in domain(),
            bytes in 0u64..1_000_000_000_000,
            secs in 946_684_800i64..1_800_000_000,
            offset_min in -720i64..=840,
            status in 100u16..600,
            cache in prop::sample::select(vec!["HIT", "MISS", "-", "STALE", "BYPASS"]),
        ) {
            let zone = chrono::FixedOffset::east_opt(i32::try_from(offset_min * 60).unwrap()).unwrap();
            let local = chrono::DateTime::from_timestamp(secs, 0).unwrap().with_timezone(&zone);
            let time = local.format("%d/%b/%Y:%H:%M:%S %z").to_string();
            let line = format!(
                r#"{addr} - {user} [{time}] "{request}" {status} {bytes} "{referer}" "{agent}" {host} {cache}"#
            );
            let e = default().parse(&line, NOW);
            prop_assert_eq!(
                e,
                Ok(Entry { domain: host, time: secs, bytes, hit: matches!(cache, "HIT" | "STALE") }),
                "{}", line
            );
        }
    }
}
