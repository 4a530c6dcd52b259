//! Users, login sessions and agent tokens.

use super::db::{Connection, OptionalExtension, Row, params};

use super::Result;

/// A stored user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// PHC-format argon2 hash.
    pub password_hash: String,
    /// Admins see every project.
    pub is_admin: bool,
    /// A tenant's one project (None for admins).
    pub project: Option<String>,
}

/// The user behind a valid session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUser {
    /// The session id.
    pub session_id: String,
    /// User row id.
    pub user_id: i64,
    /// Login name.
    pub name: String,
    /// Admins see every project.
    pub is_admin: bool,
    /// A tenant's one project.
    pub project: Option<String>,
    /// Last use, epoch ms (before this request).
    pub last_seen_ms: i64,
}

/// A stored agent token (only its SHA-256 is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTokenRow {
    /// Row id.
    pub id: i64,
    /// Project the token reports into.
    pub project: String,
    /// Region the token reports into.
    pub region: String,
    /// Vendor.
    pub party: String,
    /// Creation time, epoch ms.
    pub created_at_ms: i64,
    /// Revocation time, epoch ms.
    pub revoked_at_ms: Option<i64>,
    /// May report CDN access-log traffic (`token create --cdn`).
    pub cdn_edge: bool,
}

fn user_from_row(r: &Row<'_>) -> Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        is_admin: r.get(3)?,
        project: r.get(4)?,
    })
}

/// Inserts or replaces (by name) a user; returns its id.
pub fn upsert_user(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    is_admin: bool,
    project: Option<&str>,
    now_ms: i64,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO users (name, password_hash, is_admin, project, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash,
             is_admin = excluded.is_admin, project = excluded.project",
        params![name, password_hash, is_admin, project, now_ms],
    )?;
    let id = conn.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))?;
    // A changed password or role ends the user's sessions.
    conn.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
    Ok(id)
}

/// Looks a user up by name.
pub fn user_by_name(conn: &Connection, name: &str) -> Result<Option<UserRow>> {
    conn.query_row(
        "SELECT id, name, password_hash, is_admin, project FROM users WHERE name = ?1",
        [name],
        user_from_row,
    )
    .optional()
}

/// All users, by name.
pub fn list_users(conn: &Connection) -> Result<Vec<UserRow>> {
    let mut stmt =
        conn.prepare("SELECT id, name, password_hash, is_admin, project FROM users ORDER BY name")?;
    let rows = stmt.query_map(params![], user_from_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// Deletes a user (and its sessions); true when it existed.
pub fn delete_user(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM users WHERE name = ?1", [name])? > 0)
}

/// Number of admin users.
pub fn admin_count(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM users WHERE is_admin = 1",
        params![],
        |r| r.get(0),
    )
}

/// Creates a session.
pub fn create_session(
    conn: &Connection,
    session_id: &str,
    user_id: i64,
    now_ms: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO sessions (id, user_id, created_at_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)",
        params![session_id, user_id, now_ms],
    )?;
    Ok(())
}

/// The session's user if the session exists and was used within `idle_ms`.
pub fn session_user(
    conn: &Connection,
    session_id: &str,
    now_ms: i64,
    idle_ms: i64,
) -> Result<Option<SessionUser>> {
    conn.query_row(
        "SELECT s.id, u.id, u.name, u.is_admin, u.project, s.last_seen_ms
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = ?1 AND s.last_seen_ms > ?2",
        params![session_id, now_ms - idle_ms],
        |r| {
            Ok(SessionUser {
                session_id: r.get(0)?,
                user_id: r.get(1)?,
                name: r.get(2)?,
                is_admin: r.get(3)?,
                project: r.get(4)?,
                last_seen_ms: r.get(5)?,
            })
        },
    )
    .optional()
}

/// Marks a session used now.
pub fn touch_session(conn: &Connection, session_id: &str, now_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET last_seen_ms = ?2 WHERE id = ?1",
        params![session_id, now_ms],
    )?;
    Ok(())
}

/// Ends one session; false when there was none.
pub fn delete_session(conn: &Connection, session_id: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM sessions WHERE id = ?1", [session_id])? > 0)
}

/// Deletes sessions idle for longer than `idle_ms`; returns how many.
pub fn purge_sessions(conn: &Connection, now_ms: i64, idle_ms: i64) -> Result<usize> {
    conn.execute(
        "DELETE FROM sessions WHERE last_seen_ms <= ?1",
        [now_ms - idle_ms],
    )
}

/// Stores a new agent token by its SHA-256; returns its id.
pub fn create_agent_token(
    conn: &Connection,
    token_sha256: &str,
    project: &str,
    region: &str,
    party: &str,
    cdn_edge: bool,
    now_ms: i64,
) -> Result<i64> {
    conn.query_row(
        "INSERT INTO agent_tokens (token_sha256, project, region, party, created_at_ms, cdn_edge)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![token_sha256, project, region, party, now_ms, cdn_edge],
        |r| r.get(0),
    )
}

fn token_from_row(r: &Row<'_>) -> Result<AgentTokenRow> {
    Ok(AgentTokenRow {
        id: r.get(0)?,
        project: r.get(1)?,
        region: r.get(2)?,
        party: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
        cdn_edge: r.get(6)?,
    })
}

/// Looks a token up by its SHA-256 (revoked ones included; the caller decides).
pub fn agent_token_by_hash(conn: &Connection, token_sha256: &str) -> Result<Option<AgentTokenRow>> {
    conn.query_row(
        "SELECT id, project, region, party, created_at_ms, revoked_at_ms, cdn_edge
             FROM agent_tokens WHERE token_sha256 = ?1",
        [token_sha256],
        token_from_row,
    )
    .optional()
}

/// Looks a token up by id.
pub fn agent_token_by_id(conn: &Connection, id: i64) -> Result<Option<AgentTokenRow>> {
    conn.query_row(
        "SELECT id, project, region, party, created_at_ms, revoked_at_ms, cdn_edge
             FROM agent_tokens WHERE id = ?1",
        [id],
        token_from_row,
    )
    .optional()
}

/// All tokens, oldest first.
pub fn list_agent_tokens(conn: &Connection) -> Result<Vec<AgentTokenRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, project, region, party, created_at_ms, revoked_at_ms, cdn_edge
         FROM agent_tokens ORDER BY id",
    )?;
    let rows = stmt.query_map(params![], token_from_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// Revokes a token; true when it existed and was not already revoked.
pub fn revoke_agent_token(conn: &Connection, id: i64, now_ms: i64) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE agent_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
        params![id, now_ms],
    )? > 0)
}
