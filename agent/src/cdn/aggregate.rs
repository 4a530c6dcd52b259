//! Per-domain, per-5-minute-bucket sums of one tick's access-log lines.

use std::collections::{BTreeMap, HashMap};

use vmmon_common::wire::{CDN_BUCKET_SECS, CdnBucketDelta};

use super::format::Entry;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    bytes: u64,
    hit_bytes: u64,
    requests: u64,
}

/// Sums by (domain, bucket start), bounded in the number of distinct keys.
#[derive(Debug, Default)]
pub struct Aggregator {
    by_domain: HashMap<String, BTreeMap<i64, Totals>>,
    keys: usize,
}

/// The bucket (start, Unix seconds) a time falls in.
pub fn bucket_of(time: i64) -> i64 {
    time.div_euclid(CDN_BUCKET_SECS) * CDN_BUCKET_SECS
}

impl Aggregator {
    /// Distinct (domain, bucket) keys so far.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Whether adding `e` would create a new key.
    pub fn is_new_key(&self, e: &Entry) -> bool {
        self.by_domain
            .get(e.domain.as_str())
            .is_none_or(|b| !b.contains_key(&bucket_of(e.time)))
    }

    /// Adds one request.
    pub fn add(&mut self, e: &Entry) {
        let bucket = bucket_of(e.time);
        let buckets = match self.by_domain.get_mut(e.domain.as_str()) {
            Some(b) => b,
            None => self.by_domain.entry(e.domain.clone()).or_default(),
        };
        let t = buckets.entry(bucket).or_insert_with(|| {
            self.keys += 1;
            Totals::default()
        });
        t.bytes = t.bytes.saturating_add(e.bytes);
        if e.hit {
            t.hit_bytes = t.hit_bytes.saturating_add(e.bytes);
        }
        t.requests += 1;
    }

    /// The sums, ordered by domain then bucket.
    pub fn into_deltas(self) -> Vec<CdnBucketDelta> {
        let mut domains: Vec<_> = self.by_domain.into_iter().collect();
        domains.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(self.keys);
        for (domain, buckets) in domains {
            for (bucket_start, t) in buckets {
                out.push(CdnBucketDelta {
                    domain: domain.clone(),
                    bucket_start,
                    bytes: t.bytes,
                    hit_bytes: t.hit_bytes,
                    requests: t.requests,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(domain: &str, time: i64, bytes: u64, hit: bool) -> Entry {
        Entry {
            domain: domain.into(),
            time,
            bytes,
            hit,
        }
    }

    #[test]
    fn sums_per_domain_and_bucket() {
        let mut a = Aggregator::default();
        assert!(a.is_empty());
        let b0 = 1_700_000_100;
        assert_eq!(bucket_of(b0), b0);
        a.add(&e("b.com", b0, 10, true));
        a.add(&e("a.com", b0, 5, false));
        a.add(&e("a.com", b0 + 299, 7, true));
        a.add(&e("a.com", b0 + 300, 1, false));
        assert_eq!(a.len(), 3);
        assert!(!a.is_new_key(&e("a.com", b0 + 100, 1, false)));
        assert!(a.is_new_key(&e("c.com", b0, 1, false)));
        let d = a.into_deltas();
        assert_eq!(
            d,
            vec![
                CdnBucketDelta {
                    domain: "a.com".into(),
                    bucket_start: b0,
                    bytes: 12,
                    hit_bytes: 7,
                    requests: 2
                },
                CdnBucketDelta {
                    domain: "a.com".into(),
                    bucket_start: b0 + 300,
                    bytes: 1,
                    hit_bytes: 0,
                    requests: 1
                },
                CdnBucketDelta {
                    domain: "b.com".into(),
                    bucket_start: b0,
                    bytes: 10,
                    hit_bytes: 10,
                    requests: 1
                },
            ]
        );
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(299), 0);
        assert_eq!(bucket_of(300), 300);
        assert_eq!(bucket_of(1_481_670_000 + 299), 1_481_670_000);
    }
}
