use super::*;
use serde_json::json;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn sh() -> Tz {
    "Asia/Shanghai".parse().unwrap()
}

#[test]
fn signature_matches_the_seed_definition() {
    // Seed 004: MD5(20161023jcloud_00e7a31b1c5ea0efa9aa2f29c6559f7d61).
    assert_eq!(
        signature(
            date(2016, 10, 23),
            "jcloud_00",
            "e7a31b1c5ea0efa9aa2f29c6559f7d61"
        ),
        "a35685491fd80a80b40a718c3a5c5c56"
    );
}

#[test]
fn yesterday_today_and_tomorrow_are_accepted() {
    let today = date(2024, 3, 1);
    let sig = |d| signature(d, "u", "s");
    assert!(signature_ok(&sig(today), "u", "s", today));
    assert!(signature_ok(&sig(date(2024, 2, 29)), "u", "s", today));
    assert!(signature_ok(&sig(date(2024, 3, 2)), "u", "s", today));
    assert!(
        signature_ok(&sig(today).to_ascii_uppercase(), "u", "s", today),
        "hex case does not matter"
    );
    assert!(!signature_ok(&sig(date(2024, 2, 28)), "u", "s", today));
    assert!(!signature_ok(&sig(date(2024, 3, 3)), "u", "s", today));
    assert!(!signature_ok(&sig(today), "u", "other", today));
    assert!(!signature_ok(&sig(today), "v", "s", today));
    assert!(!signature_ok("", "u", "s", today));
    assert!(!signature_ok(&sig(today)[..31], "u", "s", today));
}

#[test]
fn request_from_json_form_and_query() {
    let want = FlowRequest {
        username: "u".into(),
        signature: "abc".into(),
        domain: "a.com,b.com".into(),
        start_time: "2016-12-14 07:00".into(),
        end_time: Some("2016-12-14 12:59".into()),
    };
    let json = r#"{"username":"u","signature":"abc","domain":"a.com,b.com",
        "start_time":"2016-12-14 07:00","end_time":"2016-12-14 12:59","extra":5}"#;
    assert_eq!(
        parse_request("", Some("application/json"), json.as_bytes()),
        Ok(want.clone())
    );
    // No Content-Type: sniffed.
    assert_eq!(parse_request("", None, json.as_bytes()), Ok(want.clone()));
    let form = "username=u&signature=abc&domain=a.com%2Cb.com&start_time=2016-12-14+07%3A00&end_time=2016-12-14%2012:59";
    assert_eq!(
        parse_request(
            "",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            form.as_bytes()
        ),
        Ok(want.clone())
    );
    assert_eq!(parse_request(form, None, b""), Ok(want.clone()));
    // Split between the query string and the body.
    assert_eq!(
        parse_request(
            "username=u&signature=abc",
            Some("application/json"),
            br#"{"domain":"a.com,b.com","start_time":"2016-12-14 07:00","end_time":"2016-12-14 12:59"}"#
        ),
        Ok(want)
    );
    // Optional fields: no domain = all, null end_time = now.
    let r = parse_request(
        "",
        None,
        br#"{"username":"u","signature":"s","start_time":"2016-12-14 07:00","end_time":null}"#,
    )
    .unwrap();
    assert_eq!((r.domain.as_str(), r.end_time), ("", None));
}

#[test]
fn bad_requests_have_their_own_status() {
    let st = |q: &str, ct: Option<&str>, b: &str| parse_request(q, ct, b.as_bytes()).unwrap_err();
    assert_eq!(st("", None, "{nope").status, status::MALFORMED);
    assert_eq!(st("", None, "[1,2]").status, status::MALFORMED);
    assert_eq!(
        st("", Some("application/json"), "username=u").status,
        status::MALFORMED
    );
    assert_eq!(
        st("", Some("multipart/form-data"), "x").status,
        status::MALFORMED
    );
    let e = st(
        "",
        None,
        r#"{"username":5,"signature":"s","start_time":"x"}"#,
    );
    assert_eq!(e.status, status::MALFORMED);
    assert!(e.msg.contains("username must be a string"), "{}", e.msg);
    let e = st("username=u", None, r#"{"username":"u"}"#);
    assert_eq!(e.status, status::MALFORMED);
    assert!(e.msg.contains("more than once"), "{}", e.msg);
    let e = st("", None, r#"{"username":"u","start_time":" "}"#);
    assert_eq!(e.status, status::MISSING_FIELD);
    assert_eq!(e.msg, "missing required field(s): signature, start_time");
    assert_eq!(st("", None, "").status, status::MISSING_FIELD);
}

#[test]
fn windows_and_their_errors() {
    let tz = sh();
    // 2016-12-14 07:00 +0800 = 1481670000.
    let now = 1_481_670_000 + 86_400;
    let w = window(tz, "2016-12-14 07:00", Some("2016-12-14 12:59"), now).unwrap();
    assert_eq!(w.first, 1_481_670_000);
    assert_eq!(w.last, 1_481_670_000 + 5 * 3600 + 55 * 60);
    assert_eq!(w.starts().count(), 72);
    // An unaligned start takes its whole bucket; end = start is one bucket.
    let w = window(tz, "2016-12-14 07:03", Some("2016-12-14 07:03"), now).unwrap();
    assert_eq!((w.first, w.last), (1_481_670_000, 1_481_670_000));
    // No end: up to now; never a bucket after now.
    let w = window(tz, "2016-12-14 07:00", None, 1_481_670_000 + 700).unwrap();
    assert_eq!(w.last, 1_481_670_000 + 600);
    let w = window(
        tz,
        "2016-12-14 07:00",
        Some("2016-12-14 09:00"),
        1_481_670_000 + 700,
    )
    .unwrap();
    assert_eq!(w.last, 1_481_670_000 + 600);
    let w = window(
        tz,
        "2016-12-14 07:10",
        Some("2016-12-14 09:00"),
        1_481_670_000,
    )
    .unwrap();
    assert_eq!(
        w.starts().count(),
        0,
        "a window wholly in the future is empty"
    );
    // Seconds and a T are tolerated.
    assert!(window(tz, "2016-12-14T07:00:30", None, now).is_ok());
    for bad in [
        "2016-12-14",
        "14/12/2016 07:00",
        "2016-12-32 07:00",
        "yesterday",
        "",
    ] {
        assert_eq!(
            window(tz, bad, None, now).unwrap_err().status,
            status::BAD_TIME,
            "{bad}"
        );
    }
    let e = window(tz, "2016-12-14 07:00", Some("2016-12-14 7:00pm"), now).unwrap_err();
    assert_eq!(e.status, status::BAD_TIME);
    assert!(e.msg.starts_with("end_time"), "{}", e.msg);
    assert_eq!(
        window(tz, "2016-12-14 07:00", Some("2016-12-14 06:59"), now)
            .unwrap_err()
            .status,
        status::END_BEFORE_START
    );
    assert!(window(tz, "2016-11-13 07:00", Some("2016-12-14 07:00"), now).is_ok());
    assert_eq!(
        window(tz, "2016-11-13 07:00", Some("2016-12-14 07:01"), now)
            .unwrap_err()
            .status,
        status::SPAN_TOO_LONG
    );
}

#[test]
fn domains_must_be_owned() {
    let owned = vec!["a.com".to_string(), "b.com".to_string()];
    assert_eq!(requested_domains("", &owned), Ok(vec![]));
    assert_eq!(requested_domains(" , ", &owned), Ok(vec![]));
    assert_eq!(
        requested_domains("B.com, a.com,b.com", &owned),
        Ok(vec!["b.com".to_string(), "a.com".to_string()])
    );
    let e = requested_domains("a.com,c.com,http://b.com", &owned).unwrap_err();
    assert_eq!(e.status, status::UNOWNED_DOMAIN);
    assert_eq!(
        e.msg,
        "domain(s) not owned by this user: c.com,http://b.com"
    );
}

#[test]
fn megabytes_and_entries() {
    assert_eq!(mb(0), 0.0);
    assert_eq!(mb(1_048_576), 1.0);
    assert_eq!(mb(1_572_864), 1.5);
    assert_eq!(mb(1), 0.000001);
    let w = Window {
        first: 300,
        last: 900,
    };
    let mut sums = BTreeMap::new();
    sums.insert(600, (2_097_152, 1_048_576));
    let e = entry("a.com", w, &sums);
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({"domain": "a.com", "data": [[300, 0.0, 0.0], [600, 2.0, 1.0], [900, 0.0, 0.0]]})
    );
    assert_eq!(
        serde_json::to_string(&answer(vec![e])).unwrap(),
        r#"{"status":0,"msg":"成功","data":[{"domain":"a.com","data":[[300,0.0,0.0],[600,2.0,1.0],[900,0.0,0.0]]}]}"#
    );
}

#[test]
fn domain_lists_for_cdn_user_add() {
    assert_eq!(
        parse_domain_list(" B.com,a.com,,b.com ").unwrap(),
        vec!["a.com".to_string(), "b.com".to_string()]
    );
    assert!(parse_domain_list(" , ").is_err());
    assert!(parse_domain_list("http://a.com").is_err());
    assert!(check_name("jcloud_00").is_ok());
    assert!(check_name("a b").is_err());
    assert!(check_name("").is_err());
}

#[test]
fn windows_in_a_dst_zone_count_real_5_minute_buckets() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let utc = |s: &str| {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp()
    };
    let now = utc("2026-01-01 00:00");
    // (start, end local, first and last bucket in UTC, buckets)
    let cases = [
        // 23-hour day: 01:50 CET to 03:10 CEST is 20 real minutes, the missing hour has none.
        (
            "2025-03-30 01:50",
            "2025-03-30 03:10",
            "2025-03-30 00:50",
            "2025-03-30 01:10",
            5,
        ),
        // A start inside the gap is the gap's end.
        (
            "2025-03-30 02:30",
            "2025-03-30 03:10",
            "2025-03-30 01:00",
            "2025-03-30 01:10",
            3,
        ),
        // 25-hour day: 02:00 is ambiguous (the earlier, CEST); 02:00 CEST to 03:00 CET is 2 h.
        (
            "2025-10-26 02:00",
            "2025-10-26 03:00",
            "2025-10-26 00:00",
            "2025-10-26 02:00",
            25,
        ),
        // Whole days: 23 h and 25 h of buckets (both ends inclusive).
        (
            "2025-03-30 00:00",
            "2025-03-31 00:00",
            "2025-03-29 23:00",
            "2025-03-30 22:00",
            23 * 12 + 1,
        ),
        (
            "2025-10-26 00:00",
            "2025-10-27 00:00",
            "2025-10-25 22:00",
            "2025-10-26 23:00",
            25 * 12 + 1,
        ),
    ];
    for (start, end, first, last, n) in cases {
        let w = window(tz, start, Some(end), now).unwrap();
        assert_eq!(
            (w.first, w.last, w.starts().count()),
            (utc(first), utc(last), n),
            "{start} → {end}"
        );
    }
}
