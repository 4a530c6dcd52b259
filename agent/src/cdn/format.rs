//! nginx `log_format` strings compiled into a line matcher.
//!
//! A format is literal text and variables (`$name` or `${name}`). Literal text must appear
//! exactly; a variable takes the text up to an occurrence of the literal text that follows it in
//! the format, and the last variable of a format takes the rest of the line. Which occurrence is
//! ambiguous whenever a value may contain the separator: nginx escapes `"`, `\` and control
//! characters inside variables (`\x22`), but not spaces or brackets, so a `$remote_user` of
//! `a [b` (from any Basic `Authorization` header) holds the ` [` that ends it in `combined`.
//! Matching therefore backtracks: every occurrence is tried, leftmost first, and a split is kept
//! only when the whole line matches and every variable the pipeline reads has the shape it must
//! have (`$status` and the bytes are numbers, the time parses, the host is a valid domain, the
//! cache status is one token). Only when no split passes is the leftmost layout-valid split
//! used, to report which figure is wrong. The search is bounded ([`MAX_MATCH_STEPS`]); a line
//! that exhausts it is refused as malformed. Two variables with no literal text between them
//! cannot be split and are refused when the format is compiled.
//!
//! Variables the CDN pipeline reads (others match as text and are ignored):
//! * the domain: `$host`, else `$http_host` (a `:port` suffix is dropped), else `$server_name`;
//! * bytes sent: `$bytes_sent` (whole response, headers included) if present, else
//!   `$body_bytes_sent`;
//! * the time: `$time_local` (`14/Dec/2016:07:00:00 +0800`), else `$time_iso8601`, else `$msec`;
//! * the cache status: `$upstream_cache_status`;
//! * `$status`, when present, must be a number.

use chrono::{DateTime, NaiveDate};

/// nginx's `combined` format followed by ` $host $upstream_cache_status`.
pub const DEFAULT_LOG_FORMAT: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $host $upstream_cache_status";

/// Cache statuses counted as hits: served from the cache without fetching the body from the
/// origin (`STALE`/`UPDATING`: a stale cached copy served; `REVALIDATED`: the origin only
/// confirmed the cached copy). `MISS`, `BYPASS`, `EXPIRED` and `-` (not cacheable) are not hits.
pub const HIT_STATUSES: [&str; 4] = ["HIT", "STALE", "UPDATING", "REVALIDATED"];

/// Most steps (parts matched and candidate splits tried) the matcher spends on one line.
pub const MAX_MATCH_STEPS: u32 = 10_000;

/// Log times before 2000-01-01 are refused as malformed.
pub const MIN_LOG_TIME: i64 = 946_684_800;
/// Log times more than this far ahead of the agent's clock are refused as malformed.
pub const MAX_FUTURE_SECS: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    HttpHost,
    ServerName,
    BytesSent,
    BodyBytesSent,
    TimeLocal,
    TimeIso8601,
    Msec,
    CacheStatus,
    Status,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        match name {
            "host" => Field::Host,
            "http_host" => Field::HttpHost,
            "server_name" => Field::ServerName,
            "bytes_sent" => Field::BytesSent,
            "body_bytes_sent" => Field::BodyBytesSent,
            "time_local" => Field::TimeLocal,
            "time_iso8601" => Field::TimeIso8601,
            "msec" => Field::Msec,
            "upstream_cache_status" => Field::CacheStatus,
            "status" => Field::Status,
            _ => Field::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Field),
}

/// A format that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Nothing to match.
    #[error("the access-log format is empty")]
    Empty,
    /// `$` not followed by a name, or an unclosed `${`.
    #[error("the access-log format has a `$` at byte {0} that is not followed by a variable name")]
    BadVariable(usize),
    /// Two variables with no literal text between them.
    #[error(
        "the access-log format has ${0} directly followed by another variable; put literal text (e.g. a space) between them"
    )]
    Adjacent(String),
    /// A variable the CDN pipeline needs is absent.
    #[error("the access-log format lacks {0}")]
    Missing(&'static str),
}

/// Why a line was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line's layout does not follow the format.
    #[error("layout does not match the format")]
    Layout,
    /// No usable domain (empty, `-`, or invalid characters).
    #[error("no usable host")]
    Host,
    /// Bytes sent is not a number.
    #[error("bytes sent is not a number")]
    Bytes,
    /// The time does not parse or is out of range.
    #[error("bad or out-of-range time")]
    Time,
    /// `$status` is not a number.
    #[error("status is not a number")]
    Status,
}

/// One counted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower-case domain (valid per [`vmmon_common::wire::valid_cdn_domain`]).
    pub domain: String,
    /// Unix epoch seconds of the request (the log line's time).
    pub time: i64,
    /// Bytes sent.
    pub bytes: u64,
    /// Whether the cache status counts as a hit ([`HIT_STATUSES`]).
    pub hit: bool,
}

/// A compiled format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    parts: Vec<Part>,
    host: Field,
    bytes: Field,
    time: Field,
}

impl LogFormat {
    /// Compiles an nginx `log_format` string (the joined string, without the `log_format NAME`
    /// and the quotes of the nginx configuration).
    pub fn compile(format: &str) -> Result<LogFormat, FormatError> {
        let parts = tokenize(format)?;
        if parts.is_empty() {
            return Err(FormatError::Empty);
        }
        let has = |f: Field| parts.contains(&Part::Var(f));
        let pick = |options: &[Field]| options.iter().copied().find(|f| has(*f));
        let host = pick(&[Field::Host, Field::HttpHost, Field::ServerName])
            .ok_or(FormatError::Missing("$host (or $http_host / $server_name)"))?;
        let bytes = pick(&[Field::BytesSent, Field::BodyBytesSent])
            .ok_or(FormatError::Missing("$bytes_sent or $body_bytes_sent"))?;
        let time = pick(&[Field::TimeLocal, Field::TimeIso8601, Field::Msec]).ok_or(
            FormatError::Missing("$time_local (or $time_iso8601 / $msec)"),
        )?;
        if !has(Field::CacheStatus) {
            return Err(FormatError::Missing("$upstream_cache_status"));
        }
        Ok(LogFormat {
            parts,
            host,
            bytes,
            time,
        })
    }

    /// Parses one line (without its newline) read at `now` (Unix seconds).
    pub fn parse(&self, line: &str, now: i64) -> Result<Entry, LineError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut values = Vec::with_capacity(self.parts.len());
        let mut budget = MAX_MATCH_STEPS;
        if !self.walk(0, line, true, &mut budget, &mut values) {
            values.clear();
            budget = MAX_MATCH_STEPS;
            if !self.walk(0, line, false, &mut budget, &mut values) {
                return Err(LineError::Layout);
            }
        }
        let mut host = None;
        let mut bytes = None;
        let mut time = None;
        let mut cache = None;
        let vars = self.parts.iter().filter_map(|p| match p {
            Part::Var(f) => Some(*f),
            Part::Literal(_) => None,
        });
        for (field, value) in vars.zip(values) {
            match field {
                f if f == self.host && host.is_none() => host = Some(value),
                f if f == self.bytes && bytes.is_none() => bytes = Some(value),
                f if f == self.time && time.is_none() => time = Some(value),
                Field::CacheStatus if cache.is_none() => cache = Some(value),
                Field::Status if !is_number(value) => return Err(LineError::Status),
                _ => {}
            }
        }
        let (Some(host), Some(bytes), Some(time), Some(cache)) = (host, bytes, time, cache) else {
            return Err(LineError::Layout);
        };
        let domain = normalize_host(host, self.host == Field::HttpHost).ok_or(LineError::Host)?;
        if !is_number(bytes) || bytes.len() > 19 {
            return Err(LineError::Bytes);
        }
        let bytes: u64 = bytes.parse().map_err(|_| LineError::Bytes)?;
        let time = self.parse_time(time).ok_or(LineError::Time)?;
        if !(MIN_LOG_TIME..=now.saturating_add(MAX_FUTURE_SECS)).contains(&time) {
            return Err(LineError::Time);
        }
        let cache = cache.trim();
        let hit = HIT_STATUSES.iter().any(|h| cache.eq_ignore_ascii_case(h));
        Ok(Entry {
            domain,
            time,
            bytes,
            hit,
        })
    }

    fn parse_time(&self, s: &str) -> Option<i64> {
        match self.time {
            Field::TimeLocal => parse_time_local(s),
            Field::TimeIso8601 => DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp()),
            _ => parse_msec(s),
        }
    }

    /// Whether `value` has the shape its variable must have (for choosing among splits).
    fn plausible(&self, field: Field, value: &str) -> bool {
        match field {
            f if f == self.host => normalize_host(value, f == Field::HttpHost).is_some(),
            f if f == self.bytes => is_number(value) && value.len() <= 19,
            f if f == self.time => self.parse_time(value).is_some(),
            Field::Status => is_number(value),
            Field::CacheStatus => !value.is_empty() && !value.contains(' '),
            _ => true,
        }
    }

    /// Matches `parts[i..]` against `rest`, pushing each variable's value; backtracks over the
    /// occurrences of the literal after a variable. `strict`: values must be [`Self::plausible`].
    fn walk<'l>(
        &self,
        i: usize,
        rest: &'l str,
        strict: bool,
        budget: &mut u32,
        values: &mut Vec<&'l str>,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match self.parts.get(i) {
            None => rest.is_empty(),
            Some(Part::Literal(lit)) => rest
                .strip_prefix(lit.as_str())
                .is_some_and(|r| self.walk(i + 1, r, strict, budget, values)),
            Some(Part::Var(field)) => {
                let Some(Part::Literal(next)) = self.parts.get(i + 1) else {
                    // The last part: the rest of the line.
                    if strict && !self.plausible(*field, rest) {
                        return false;
                    }
                    values.push(rest);
                    return true;
                };
                let step = next.chars().next().map_or(1, char::len_utf8);
                let mut from = 0;
                while let Some(found) = rest[from..].find(next.as_str()) {
                    // Every candidate split costs a step, so the search is bounded in work.
                    if *budget == 0 {
                        return false;
                    }
                    *budget -= 1;
                    let at = from + found;
                    let value = &rest[..at];
                    if !strict || self.plausible(*field, value) {
                        values.push(value);
                        if self.walk(i + 2, &rest[at + next.len()..], strict, budget, values) {
                            return true;
                        }
                        values.pop();
                    }
                    from = at + step;
                }
                false
            }
        }
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn tokenize(format: &str) -> Result<Vec<Part>, FormatError> {
    let bytes = format.as_bytes();
    let mut parts: Vec<Part> = Vec::new();
    let mut literal = String::new();
    let mut prev_name = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            // Copy one whole UTF-8 character.
            let ch_len = format[i..].chars().next().map_or(1, char::len_utf8);
            literal.push_str(&format[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        let start = i;
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            let close = format[i + 2..]
                .find('}')
                .ok_or(FormatError::BadVariable(start))?;
            (&format[i + 2..i + 2 + close], i + 3 + close)
        } else {
            let mut j = i + 1;
            while j < bytes.len() && is_name_byte(bytes[j]) {
                j += 1;
            }
            (&format[i + 1..j], j)
        };
        if name.is_empty() || !name.bytes().all(is_name_byte) {
            return Err(FormatError::BadVariable(start));
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        } else if let Some(Part::Var(_)) = parts.last() {
            return Err(FormatError::Adjacent(prev_name));
        }
        parts.push(Part::Var(Field::of(name)));
        prev_name = name.to_string();
        i = next;
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Lower-cases a host, drops a trailing dot (and a `:port` for `$http_host`); None when unusable.
fn normalize_host(raw: &str, strip_port: bool) -> Option<String> {
    let mut h = raw.trim();
    if strip_port
        && !h.starts_with('[')
        && let Some((name, port)) = h.rsplit_once(':')
        && is_number(port)
    {
        h = name;
    } else if strip_port
        && h.starts_with('[')
        && let Some(end) = h.find(']')
    {
        h = &h[..=end];
    }
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    vmmon_common::wire::valid_cdn_domain(&h).then_some(h)
}

fn month(abbr: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|m| *m == abbr).map(|p| p as u32 + 1)
}

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    (s.len() == len && is_number(s)).then(|| s.parse().ok())?
}

/// `dd/Mon/yyyy:HH:MM:SS ±hhmm` → Unix seconds.
pub fn parse_time_local(s: &str) -> Option<i64> {
    let (dt, zone) = s.split_once(' ')?;
    let mut it = dt.splitn(3, '/');
    let (day, mon, rest) = (it.next()?, it.next()?, it.next()?);
    let mut it = rest.split(':');
    let (year, h, m, sec) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(num(year, 4)?, month(mon)?, num(day, 2)?)?;
    let local = date.and_hms_opt(num(h, 2)?, num(m, 2)?, num(sec, 2)?)?;
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zh: i64 = num(zone.get(1..3)?, 2)?;
    let zm: i64 = num(zone.get(3..)?, 2)?;
    if zm >= 60 {
        return None;
    }
    Some(local.and_utc().timestamp() - sign * (zh * 3600 + zm * 60))
}

/// `$msec` (`1480989960.123`) → whole Unix seconds.
fn parse_msec(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    if !is_number(secs) || !is_number(frac) || secs.len() > 12 {
        return None;
    }
    secs.parse().ok()
}

#[cfg(test)]
mod tests;
