//! Administrative actions behind the CLI: users, agent tokens, instances, the bootstrap admin;
//! CDN users in [`cdn`].

pub mod cdn;

use crate::auth;
use crate::store::{self, AgentTokenRow, Store, StoreError, UserRow};

/// Name of the admin created on first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// Admin-side failures.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error("cannot hash password: {0}")]
    Hash(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
}

/// The bootstrap admin created on first start, if any (its password is shown once).
pub struct Bootstrapped {
    /// Login name.
    pub name: String,
    /// The password (from `VMMON_ADMIN_PASSWORD` or generated).
    pub password: String,
    /// Whether the password was generated (and must be printed).
    pub generated: bool,
}

fn check_name(kind: &str, s: &str) -> Result<(), AdminError> {
    if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control() || c == ',') {
        return Err(AdminError::Invalid(format!(
            "{kind} must be 1–128 printable characters without commas"
        )));
    }
    Ok(())
}

/// Creates the admin user when no admin exists yet.
pub async fn bootstrap_admin(
    store: &Store,
    env_password: Option<String>,
) -> Result<Option<Bootstrapped>, AdminError> {
    let admins = store.read(store::users::admin_count).await?;
    if admins > 0 {
        return Ok(None);
    }
    let (password, generated) = match env_password.filter(|p| !p.is_empty()) {
        Some(p) => (p, false),
        None => (auth::generate_password(), true),
    };
    add_user(store, BOOTSTRAP_ADMIN, &password, None).await?;
    Ok(Some(Bootstrapped {
        name: BOOTSTRAP_ADMIN.into(),
        password,
        generated,
    }))
}

/// Adds or replaces a user: an admin when `project` is None, else a tenant of `project`.
pub async fn add_user(
    store: &Store,
    name: &str,
    password: &str,
    project: Option<&str>,
) -> Result<i64, AdminError> {
    check_name("user name", name)?;
    if let Some(p) = project {
        check_name("project", p)?;
    }
    if password.len() < 8 {
        return Err(AdminError::Invalid(
            "password must be at least 8 characters".into(),
        ));
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| AdminError::Hash(e.to_string()))?
        .map_err(|e| AdminError::Hash(e.to_string()))?;
    let (name, project) = (name.to_string(), project.map(str::to_string));
    Ok(store
        .write(move |c| {
            store::users::upsert_user(
                c,
                &name,
                &hash,
                project.is_none(),
                project.as_deref(),
                store::now_ms(),
            )
        })
        .await?)
}

/// All users.
pub async fn list_users(store: &Store) -> Result<Vec<UserRow>, AdminError> {
    Ok(store.read(store::users::list_users).await?)
}

/// Removes a user; false when there was none.
pub async fn remove_user(store: &Store, name: &str) -> Result<bool, AdminError> {
    let name = name.to_string();
    Ok(store
        .write(move |c| store::users::delete_user(c, &name))
        .await?)
}

/// Creates an agent token for a project and region; returns (id, token). The token is shown once.
/// `cdn_edge` tokens may also report CDN access-log traffic, for the domains of the CDN users
/// named in `cdn_users` (each must exist; an edge token needs at least one).
pub async fn create_token(
    store: &Store,
    project: &str,
    region: &str,
    party: &str,
    cdn_edge: bool,
    cdn_users: &[String],
) -> Result<(i64, String), AdminError> {
    if !cdn_edge && !cdn_users.is_empty() {
        return Err(AdminError::Invalid(
            "--cdn-user binds a CDN edge token: add --cdn".into(),
        ));
    }
    if cdn_edge && cdn_users.is_empty() {
        return Err(AdminError::Invalid(
            "a CDN edge token reports for the CDN users it is bound to: name them with \
             --cdn-user NAME (see cdn-user list)"
                .into(),
        ));
    }
    for name in cdn_users {
        let n = name.clone();
        let known = store
            .read(move |c| store::cdn::user_by_name(c, &n))
            .await?
            .is_some_and(|u| u.revoked_at_ms.is_none());
        if !known {
            return Err(AdminError::Invalid(format!(
                "no active CDN user named {name:?} (cdn-user add first)"
            )));
        }
    }
    check_name("project", project)?;
    check_name("region", region)?;
    if !party.is_empty() {
        check_name("party", party)?;
    }
    let token = auth::new_agent_token();
    let hash = auth::token_sha256(&token);
    let (p, r, x) = (project.to_string(), region.to_string(), party.to_string());
    let users = cdn_users.to_vec();
    let id = store
        .write(move |c| {
            let id =
                store::users::create_agent_token(c, &hash, &p, &r, &x, cdn_edge, store::now_ms())?;
            for u in &users {
                store::cdn::bind_token(c, id, u)?;
            }
            Ok(id)
        })
        .await?;
    Ok((id, token))
}

/// All agent tokens (without secrets).
pub async fn list_tokens(store: &Store) -> Result<Vec<AgentTokenRow>, AdminError> {
    Ok(store.read(store::users::list_agent_tokens).await?)
}

/// Revokes an agent token; false when unknown or already revoked.
pub async fn revoke_token(store: &Store, id: i64) -> Result<bool, AdminError> {
    Ok(store
        .write(move |c| store::users::revoke_agent_token(c, id, store::now_ms()))
        .await?)
}

/// Removes an instance and its raw samples (see [`store::instances::remove`]); false if unknown.
pub async fn remove_instance(store: &Store, instance_id: &str) -> Result<bool, AdminError> {
    vmmon_common::vocab::validate_instance_id(instance_id)
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    let id = instance_id.to_string();
    Ok(store
        .write(move |c| store::instances::remove(c, &id))
        .await?)
}

/// Every registered instance, by id.
pub async fn list_instances(store: &Store) -> Result<Vec<store::InstanceRow>, AdminError> {
    Ok(store.read(|c| store::instances::list(c, None)).await?)
}

/// Copies the SQLite store in `from` into the empty PostgreSQL store `to` (see
/// [`store::copy::sqlite_to_postgres`]): per table, rows and checksums on both sides.
pub async fn copy_store(
    from: &std::path::Path,
    to: &Store,
) -> Result<Vec<store::copy::TableCopy>, AdminError> {
    Ok(store::copy::sqlite_to_postgres(from, to).await?)
}
