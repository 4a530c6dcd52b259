//! CDN: users of the flow API (name, secret, domains), traffic per domain and 5-minute bucket
//! (`cdn_buckets`, added from each newly stored batch in the same transaction), and per-agent
//! ingestion status (`cdn_sources`: malformed access-log lines).
//!
//! The secrets are stored in plain text: the seed's signature (MD5 of date + username + secret)
//! can only be checked with the secret itself.

use super::db::{Connection, OptionalExtension, Row, params};
use vmmon_common::wire::CdnTailState;
use vmmon_common::wire::ReportBatch;

use super::Result;

/// A CDN user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdnUserRow {
    /// Row id.
    pub id: i64,
    /// Login name (the API's `username`).
    pub name: String,
    /// The shared secret of the signature.
    pub secret: String,
    /// Domains the user may query, sorted.
    pub domains: Vec<String>,
    /// Creation (or last replacement) time, epoch ms.
    pub created_at_ms: i64,
    /// Revocation time, epoch ms.
    pub revoked_at_ms: Option<i64>,
}

/// One stored bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdnBucketRow {
    /// Bucket start, epoch seconds.
    pub bucket_start: i64,
    /// Bytes sent.
    pub bytes: i64,
    /// Bytes served from cache.
    pub hit_bytes: i64,
    /// Requests.
    pub requests: i64,
}

/// An agent that reports CDN traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdnSourceRow {
    /// Instance id.
    pub instance_id: String,
    /// Access-log files the agent follows (current and rotated ones still being read).
    pub files: i64,
    /// Malformed lines the agent skipped (cumulative since its state began).
    pub malformed_lines_total: i64,
    /// When its last CDN batch was stored, epoch ms.
    pub last_report_ms: i64,
}

/// Outcome of [`upsert_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpsertUser {
    /// Saved, with this id.
    Saved(i64),
    /// A domain already belongs to another (not revoked) user.
    DomainTaken {
        /// The domain.
        domain: String,
        /// Its owner.
        owner: String,
    },
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds a newly stored batch's CDN deltas to the buckets and records the agent's ingestion
/// status. Call only for a batch stored for the first time, in the transaction that stored it.
/// `project` is the instance's (a column of `cdn_sources` on PostgreSQL only:
/// [`super::InstanceKey`]).
pub fn apply_batch(
    conn: &Connection,
    batch: &ReportBatch,
    project: &str,
    now_ms: i64,
) -> Result<()> {
    if !batch.cdn.is_empty() {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO cdn_buckets AS b (domain, bucket_start, bytes, hit_bytes, requests)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(domain, bucket_start) DO UPDATE SET
                 bytes = CASE WHEN b.bytes > 9223372036854775807 - excluded.bytes
                     THEN 9223372036854775807 ELSE b.bytes + excluded.bytes END,
                 hit_bytes = CASE WHEN b.hit_bytes > 9223372036854775807 - excluded.hit_bytes
                     THEN 9223372036854775807 ELSE b.hit_bytes + excluded.hit_bytes END,
                 requests = CASE WHEN b.requests > 9223372036854775807 - excluded.requests
                     THEN 9223372036854775807 ELSE b.requests + excluded.requests END",
        )?;
        for d in &batch.cdn {
            stmt.execute(params![
                d.domain,
                d.bucket_start,
                to_i64(d.bytes),
                to_i64(d.hit_bytes),
                to_i64(d.requests)
            ])?;
        }
    }
    if let Some(tail) = &batch.cdn_tail {
        let (project_col, project_mark, key) = if conn.is_pg() {
            (", project", ", ?6", "instance_id, project")
        } else {
            ("", "", "instance_id")
        };
        conn.prepare_cached(&format!(
            "INSERT INTO cdn_sources (instance_id, files, malformed_lines_total, last_report_ms,
                 tail_json{project_col})
             VALUES (?1, ?2, ?3, ?4, ?5{project_mark})
             ON CONFLICT({key}) DO UPDATE SET files = excluded.files,
                 malformed_lines_total = excluded.malformed_lines_total,
                 last_report_ms = excluded.last_report_ms, tail_json = excluded.tail_json"
        ))?
        .execute(conn.scoped(params![
            batch.instance_id,
            tail.files.len() as i64,
            to_i64(tail.malformed_lines_total),
            now_ms,
            serde_json::to_string(tail).ok(),
            project
        ]))?;
    }
    Ok(())
}

/// Buckets of `domain` with `from <= bucket_start <= to` (epoch seconds), oldest first.
pub fn buckets(conn: &Connection, domain: &str, from: i64, to: i64) -> Result<Vec<CdnBucketRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket_start, bytes, hit_bytes, requests FROM cdn_buckets
         WHERE domain = ?1 AND bucket_start >= ?2 AND bucket_start <= ?3 ORDER BY bucket_start",
    )?;
    let rows = stmt.query_map(params![domain, from, to], |r| {
        Ok(CdnBucketRow {
            bucket_start: r.get(0)?,
            bytes: r.get(1)?,
            hit_bytes: r.get(2)?,
            requests: r.get(3)?,
        })
    })?;
    rows.collect::<Result<Vec<_>>>()
}

fn domains_of(conn: &Connection, user_id: i64) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT domain FROM cdn_user_domains WHERE user_id = ?1 ORDER BY domain")?;
    let rows = stmt.query_map([user_id], |r| r.get(0))?;
    rows.collect::<Result<Vec<String>>>()
}

const USER_COLUMNS: &str = "id, name, secret, created_at_ms, revoked_at_ms";

fn user_from_row(r: &Row<'_>) -> Result<CdnUserRow> {
    Ok(CdnUserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        secret: r.get(2)?,
        domains: Vec::new(),
        created_at_ms: r.get(3)?,
        revoked_at_ms: r.get(4)?,
    })
}

/// The user named `name` (revoked or not).
pub fn user_by_name(conn: &Connection, name: &str) -> Result<Option<CdnUserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM cdn_users WHERE name = ?1");
    let user = conn
        .prepare_cached(&sql)?
        .query_row([name], user_from_row)
        .optional()?;
    match user {
        Some(mut u) => {
            u.domains = domains_of(conn, u.id)?;
            Ok(Some(u))
        }
        None => Ok(None),
    }
}

/// Binds an edge token to a CDN user: the token may report that user's domains.
pub fn bind_token(conn: &Connection, token_id: i64, user_name: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_token_cdn_users (token_id, user_name) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
        params![token_id, user_name],
    )?;
    Ok(())
}

/// The domains an edge token may report: those of the live CDN users bound to it, sorted.
pub fn token_domains(conn: &Connection, token_id: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT d.domain FROM agent_token_cdn_users b
         JOIN cdn_users u ON u.name = b.user_name AND u.revoked_at_ms IS NULL
         JOIN cdn_user_domains d ON d.user_id = u.id
         WHERE b.token_id = ?1 ORDER BY d.domain",
    )?;
    let rows = stmt
        .query_map([token_id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>>>()?;
    Ok(rows)
}

/// The CDN users an edge token is bound to, by name.
pub fn token_users(conn: &Connection, token_id: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_name FROM agent_token_cdn_users WHERE token_id = ?1 ORDER BY user_name",
    )?;
    let rows = stmt
        .query_map([token_id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>>>()?;
    Ok(rows)
}

/// The access-log positions after the instance's newest stored batch, if any.
pub fn positions(conn: &Connection, key: super::InstanceKey<'_>) -> Result<Option<CdnTailState>> {
    let text: Option<String> = conn
        .query_row(
            &format!(
                "SELECT tail_json FROM cdn_sources WHERE instance_id = ?1{}",
                conn.project_filter(2)
            ),
            conn.scoped(params![key.instance_id, key.project]),
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| super::StoreError::Corrupt(format!("cdn_sources.tail_json: {e}"))),
    }
}

/// Every user, by name.
pub fn list_users(conn: &Connection) -> Result<Vec<CdnUserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM cdn_users ORDER BY name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut users = stmt
        .query_map(params![], user_from_row)?
        .collect::<Result<Vec<_>>>()?;
    for u in &mut users {
        u.domains = domains_of(conn, u.id)?;
    }
    Ok(users)
}

/// Creates or replaces (by name) a user with a new secret and domain list; a revoked user is
/// active again. Refused when a domain belongs to another active user.
pub fn upsert_user(
    conn: &Connection,
    name: &str,
    secret: &str,
    domains: &[String],
    now_ms: i64,
) -> Result<UpsertUser> {
    let mut owner_stmt = conn.prepare_cached(
        "SELECT u.name FROM cdn_user_domains d JOIN cdn_users u ON u.id = d.user_id
         WHERE d.domain = ?1 AND u.revoked_at_ms IS NULL AND u.name <> ?2 LIMIT 1",
    )?;
    for domain in domains {
        let owner: Option<String> = owner_stmt
            .query_row(params![domain, name], |r| r.get(0))
            .optional()?;
        if let Some(owner) = owner {
            return Ok(UpsertUser::DomainTaken {
                domain: domain.clone(),
                owner,
            });
        }
    }
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO cdn_users (name, secret, created_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET secret = excluded.secret,
                 created_at_ms = excluded.created_at_ms, revoked_at_ms = NULL
             RETURNING id",
        )?
        .query_row(params![name, secret, now_ms], |r| r.get(0))?;
    conn.prepare_cached("DELETE FROM cdn_user_domains WHERE user_id = ?1")?
        .execute([id])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO cdn_user_domains (user_id, domain) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    for domain in domains {
        insert.execute(params![id, domain])?;
    }
    Ok(UpsertUser::Saved(id))
}

/// Revokes a user: its requests are refused from then on. False when unknown or already revoked.
pub fn revoke_user(conn: &Connection, name: &str, now_ms: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE cdn_users SET revoked_at_ms = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL",
        )?
        .execute(params![name, now_ms])?
        > 0)
}

/// Agents that report CDN traffic, by instance id.
pub fn list_sources(conn: &Connection) -> Result<Vec<CdnSourceRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT instance_id, files, malformed_lines_total, last_report_ms FROM cdn_sources
         ORDER BY instance_id",
    )?;
    let rows = stmt.query_map(params![], |r| {
        Ok(CdnSourceRow {
            instance_id: r.get(0)?,
            files: r.get(1)?,
            malformed_lines_total: r.get(2)?,
            last_report_ms: r.get(3)?,
        })
    })?;
    rows.collect::<Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use vmmon_common::wire::{CdnBucketDelta, CdnTailState, Sample, VmSample};

    fn delta(domain: &str, bucket_start: i64, bytes: u64, hit_bytes: u64) -> CdnBucketDelta {
        CdnBucketDelta {
            domain: domain.into(),
            bucket_start,
            bytes,
            hit_bytes,
            requests: 1,
        }
    }

    fn batch(cdn: Vec<CdnBucketDelta>, malformed: u64) -> ReportBatch {
        ReportBatch {
            batch_id: uuid::Uuid::new_v4(),
            instance_id: "edge-1".into(),
            seq: 0,
            samples: vec![Sample {
                vm: VmSample {
                    sampled_at_ms: 1_000,
                    proc_count: 1,
                    ..VmSample::default()
                },
                processes: None,
            }],
            dropped_samples_total: 0,
            cdn,
            cdn_tail: Some(CdnTailState {
                files: Vec::new(),
                malformed_lines_total: malformed,
            }),
        }
    }

    #[tokio::test]
    async fn batches_add_once_and_users_own_domains() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b1 = batch(
            vec![delta("a.com", 300, 10, 4), delta("b.com", 300, 1, 0)],
            2,
        );
        let b2 = batch(
            vec![delta("a.com", 300, 5, 5), delta("a.com", 600, 7, 0)],
            3,
        );
        let (c1, c2) = (b1.clone(), b2.clone());
        // The store's own steps (dedup, then the CDN buckets), as ingest runs them.
        let store_one = |c: &Connection, b: &ReportBatch, now: i64| -> Result<bool> {
            let new = super::super::samples::remember_batch(c, b, "p", now)?;
            if new {
                apply_batch(c, b, "p", now)?;
            }
            Ok(new)
        };
        let stored = store
            .write(move |c| {
                Ok([
                    store_one(c, &c1, 1)?,
                    store_one(c, &c2, 2)?,
                    // A resend of b1 adds nothing.
                    store_one(c, &c1, 3)?,
                ])
            })
            .await
            .unwrap();
        assert_eq!(stored, [true, true, false]);
        let rows = store.read(|c| buckets(c, "a.com", 0, 600)).await.unwrap();
        assert_eq!(
            rows,
            vec![
                CdnBucketRow {
                    bucket_start: 300,
                    bytes: 15,
                    hit_bytes: 9,
                    requests: 2
                },
                CdnBucketRow {
                    bucket_start: 600,
                    bytes: 7,
                    hit_bytes: 0,
                    requests: 1
                },
            ]
        );
        assert_eq!(
            store.read(|c| buckets(c, "a.com", 301, 599)).await.unwrap(),
            vec![]
        );
        let sources = store.read(list_sources).await.unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].malformed_lines_total, 3);

        let doms = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = store
            .write(move |c| {
                Ok([
                    upsert_user(c, "u1", "s1", &doms(&["a.com", "b.com"]), 1)?,
                    upsert_user(c, "u2", "s2", &doms(&["c.com", "b.com"]), 1)?,
                    upsert_user(c, "u2", "s2", &doms(&["c.com"]), 1)?,
                ])
            })
            .await
            .unwrap();
        assert!(matches!(out[0], UpsertUser::Saved(_)));
        assert_eq!(
            out[1],
            UpsertUser::DomainTaken {
                domain: "b.com".into(),
                owner: "u1".into()
            }
        );
        assert!(matches!(out[2], UpsertUser::Saved(_)));
        let u1 = store
            .read(|c| user_by_name(c, "u1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u1.domains, vec!["a.com".to_string(), "b.com".to_string()]);
        assert_eq!(u1.secret, "s1");
        assert!(store.write(|c| revoke_user(c, "u1", 5)).await.unwrap());
        assert!(!store.write(|c| revoke_user(c, "u1", 6)).await.unwrap());
        // A revoked user's domains may be given to someone else; re-adding reactivates.
        let again = store
            .write(move |c| upsert_user(c, "u2", "s3", &doms(&["c.com", "b.com"]), 7))
            .await
            .unwrap();
        assert!(matches!(again, UpsertUser::Saved(_)));
        let users = store.read(list_users).await.unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].revoked_at_ms, Some(5));
        assert_eq!(users[1].secret, "s3");
    }
}
