//! The words both sides use for the same things, defined once: instance ids, sampling-interval
//! bounds, the `cmd` cap and clock helpers. Anything that checks one of these calls this module,
//! so the agent, the collector's RPC and its HTTP APIs cannot disagree.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Why an instance id was refused (the message names the problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    /// The id is empty.
    #[error("instance_id is empty")]
    Empty,
    /// The id is longer than [`MAX_INSTANCE_ID_LEN`].
    #[error("instance_id is longer than {MAX_INSTANCE_ID_LEN} characters")]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9._:-]`.
    #[error(
        "instance_id {id:?} contains the character {bad:?}; allowed are letters, digits and . _ : -"
    )]
    BadChar {
        /// The id as given.
        id: String,
        /// The first character not allowed.
        bad: char,
    },
}

/// Checks an instance id: 1–128 of `[A-Za-z0-9._:-]` (cloud-init ids, DMI UUIDs, machine ids).
/// Anything else is refused before any lookup, so ids never reach SQL or logs unchecked.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() {
        return Err(InstanceIdError::Empty);
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(InstanceIdError::TooLong);
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(InstanceIdError::BadChar {
            id: id.to_string(),
            bad,
        });
    }
    Ok(())
}

/// Shortest sampling interval, seconds.
pub const MIN_INTERVAL_SECS: u32 = 1;
/// Longest sampling interval, seconds (a day).
pub const MAX_INTERVAL_SECS: u32 = 86_400;

/// A sampling interval in seconds, within [`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`] by
/// construction (config files, the admin's `setinterval` and the agent's register all parse into
/// it). Serializes as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IntervalSecs(u32);

/// An interval outside [`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interval of {0} s is outside {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS} seconds")]
pub struct IntervalOutOfRange(pub u64);

impl IntervalSecs {
    /// The interval, if `secs` is within bounds.
    pub fn new(secs: u64) -> Result<IntervalSecs, IntervalOutOfRange> {
        match u32::try_from(secs) {
            Ok(s) if (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&s) => Ok(IntervalSecs(s)),
            _ => Err(IntervalOutOfRange(secs)),
        }
    }

    /// Seconds.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for IntervalSecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for IntervalSecs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = u64::deserialize(d)?;
        IntervalSecs::new(secs).map_err(serde::de::Error::custom)
    }
}

/// Longest process name (`cmd`) kept, in bytes; longer ones are cut on a character boundary (a
/// user in the VM controls `argv[0]`).
pub const MAX_CMD_BYTES: usize = 255;

/// Cuts `cmd` to at most [`MAX_CMD_BYTES`] bytes on a character boundary.
pub fn cap_cmd(cmd: &mut String) {
    if cmd.len() > MAX_CMD_BYTES {
        let mut end = MAX_CMD_BYTES;
        while !cmd.is_char_boundary(end) {
            end -= 1;
        }
        cmd.truncate(end);
    }
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// `t` as epoch milliseconds (negative before 1970; saturating far outside).
pub fn epoch_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `t` as epoch seconds with a fraction (the seed's `running_time`, `shutdown_time`).
pub fn epoch_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The wall clock now, epoch milliseconds.
pub fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn instance_ids() {
        for ok in ["6abf5a1e-b85c-4e5f-ba02-f96e22cbd02e", "i-1.a_b:c", "a"] {
            assert_eq!(validate_instance_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_instance_id(""), Err(InstanceIdError::Empty));
        assert_eq!(
            validate_instance_id(&"a".repeat(129)),
            Err(InstanceIdError::TooLong)
        );
        assert_eq!(validate_instance_id(&"a".repeat(128)), Ok(()));
        assert_eq!(
            validate_instance_id("x' OR '1'='1"),
            Err(InstanceIdError::BadChar {
                id: "x' OR '1'='1".into(),
                bad: '\''
            })
        );
    }

    #[test]
    fn interval_bounds() {
        for (secs, ok) in [(0, false), (1, true), (86_400, true), (86_401, false)] {
            assert_eq!(IntervalSecs::new(secs).is_ok(), ok, "{secs}");
        }
        assert!(IntervalSecs::new(u64::from(u32::MAX) + 2).is_err());
        let v: IntervalSecs = serde_json::from_str("30").unwrap();
        assert_eq!(v.get(), 30);
        assert!(serde_json::from_str::<IntervalSecs>("0").is_err());
        assert_eq!(serde_json::to_string(&v).unwrap(), "30");
    }

    #[test]
    fn cmd_cap_cuts_on_a_char_boundary() {
        let mut s = "é".repeat(200); // 400 bytes, 2 per char
        cap_cmd(&mut s);
        assert_eq!(s.len(), 254);
        let mut short = "sshd".to_string();
        cap_cmd(&mut short);
        assert_eq!(short, "sshd");
    }

    #[test]
    fn epoch_helpers() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(epoch_ms(t), 1_500);
        assert_eq!(epoch_secs(t), 1.5);
        assert_eq!(epoch_ms(UNIX_EPOCH - Duration::from_millis(20)), -20);
    }
}
