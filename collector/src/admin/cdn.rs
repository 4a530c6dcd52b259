//! The admin actions behind `vmmon-collector cdn-user …` and `cdn-sources`.

use vmmon_common::vocab::now_ms;

use super::AdminError;
use crate::cdn::{check_name, parse_domain_list};
use crate::store::{self, Store, cdn::CdnSourceRow, cdn::CdnUserRow, cdn::UpsertUser};

/// Creates (or replaces, with a new secret) a CDN user; returns the secret (32 lower-hex chars).
pub async fn add_user(store: &Store, name: &str, domains: &str) -> Result<String, AdminError> {
    check_name(name).map_err(AdminError::Invalid)?;
    let domains = parse_domain_list(domains).map_err(AdminError::Invalid)?;
    let secret = crate::auth::random_hex(16);
    let (n, s) = (name.to_string(), secret.clone());
    let out = store
        .write(move |c| store::cdn::upsert_user(c, &n, &s, &domains, now_ms()))
        .await?;
    match out {
        UpsertUser::Saved(_) => Ok(secret),
        UpsertUser::DomainTaken { domain, owner } => Err(AdminError::Invalid(format!(
            "domain {domain} already belongs to CDN user {owner:?} (revoke that user first)"
        ))),
    }
}

/// All CDN users (with secrets: callers print only what they should).
pub async fn list_users(store: &Store) -> Result<Vec<CdnUserRow>, AdminError> {
    Ok(store.read(store::cdn::list_users).await?)
}

/// Revokes a CDN user; false when unknown or already revoked.
pub async fn revoke_user(store: &Store, name: &str) -> Result<bool, AdminError> {
    let name = name.to_string();
    Ok(store
        .write(move |c| store::cdn::revoke_user(c, &name, now_ms()))
        .await?)
}

/// Agents reporting CDN traffic.
pub async fn list_sources(store: &Store) -> Result<Vec<CdnSourceRow>, AdminError> {
    Ok(store.read(store::cdn::list_sources).await?)
}
