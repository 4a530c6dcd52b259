//! Credentials: argon2 password hashes, session ids, agent tokens; the login path's guards in
//! [`guard`].

pub mod guard;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Sessions are marked used at most this often (each mark is a write), and at least four times
/// per idle period so a short `session_idle_secs` still keeps an active session alive.
const SESSION_TOUCH_EVERY_MS: i64 = 60_000;

/// The user behind a session id if the session is live; marks it used. One implementation for
/// every API that accepts a login session (wsgi_app.py, mana_api, the rating API).
pub async fn session_user(
    store: &crate::store::Store,
    session_idle_ms: i64,
    session_id: &str,
) -> Result<Option<crate::store::SessionUser>, crate::store::StoreError> {
    use crate::store;
    let idle_ms = session_idle_ms;
    let now = store::now_ms();
    let lookup = session_id.to_string();
    let user = store
        .read(move |c| store::users::session_user(c, &lookup, now, idle_ms))
        .await?;
    if let Some(u) = &user
        && now - u.last_seen_ms > SESSION_TOUCH_EVERY_MS.min(idle_ms / 4)
    {
        let sid = session_id.to_string();
        store
            .write(move |c| store::users::touch_session(c, &sid, now))
            .await?;
    }
    Ok(user)
}

/// Ends the session `session_id` (logout); false when it did not exist.
pub async fn end_session(
    store: &crate::store::Store,
    session_id: &str,
) -> Result<bool, crate::store::StoreError> {
    let sid = session_id.to_string();
    store
        .write(move |c| crate::store::users::delete_session(c, &sid))
        .await
}

/// Prefix that makes agent tokens recognisable in logs and config files.
pub const AGENT_TOKEN_PREFIX: &str = "vmt_";

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Largest argon2 memory cost a stored hash may ask for, KiB (the default is 19 MiB).
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Checks a password against a stored PHC hash (false on any mismatch or bad hash), with the
/// argon2 working memory in `blocks`, kept by the caller across checks: the password pool's threads reuse one buffer each instead of allocating 19 MiB per
/// check, which glibc would keep around in fragmented arenas (measured: 30 concurrent wrong
/// logins grew the collector to 257 MB with a fresh buffer per check).
pub fn verify_password_in(password: &str, phc: &str, blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Some(expected), Some(salt)) = (
        argon2::Algorithm::new(parsed.algorithm.as_str()),
        parsed.hash,
        parsed.salt,
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let count = params.block_count();
    if blocks.len() < count {
        blocks.resize(count, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..count])
        .is_err()
    {
        return false;
    }
    bool::from(subtle::ConstantTimeEq::ct_eq(
        out.as_slice(),
        expected.as_bytes(),
    ))
}

/// A fresh random secret of `bytes` bytes, lower hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new agent token (shown once; only its SHA-256 is stored).
pub fn new_agent_token() -> String {
    format!("{AGENT_TOKEN_PREFIX}{}", random_hex(24))
}

/// SHA-256 of a token, lower hex: the stored form.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A generated password for the bootstrap admin.
pub fn generate_password() -> String {
    random_hex(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let verify = |pw: &str, phc: &str| verify_password_in(pw, phc, &mut Vec::new());
        assert!(verify("s3cret", &h));
        assert!(!verify("S3cret", &h));
        assert!(!verify("s3cret", "not a hash"));
        // The reusing verifier agrees with argon2's own, buffer reused across checks.
        use argon2::PasswordVerifier;
        let mut blocks = Vec::new();
        for (pw, ok) in [
            ("s3cret", true),
            ("S3cret", false),
            ("", false),
            ("s3cret", true),
        ] {
            assert_eq!(verify_password_in(pw, &h, &mut blocks), ok, "{pw}");
            let parsed = PasswordHash::new(&h).unwrap();
            assert_eq!(
                Argon2::default()
                    .verify_password(pw.as_bytes(), &parsed)
                    .is_ok(),
                ok
            );
        }
        // Tampered hashes and absurd costs are refused, not computed.
        let tampered = h.replacen("m=19456", "m=999999999", 1);
        assert!(!verify_password_in("s3cret", &tampered, &mut blocks));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_agent_token();
        let b = new_agent_token();
        assert_ne!(a, b);
        assert!(a.starts_with(AGENT_TOKEN_PREFIX));
        assert_eq!(token_sha256(&a).len(), 64);
        assert_ne!(token_sha256(&a), token_sha256(&b));
    }
}
