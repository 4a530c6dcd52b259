//! Who is calling `/v1`, per `rating.auth`, and CloudKitty's v1 policies.
//!
//! * `session` (default): `X-Auth-Token` is a session id from the method-coded login (458753);
//!   admins (`users.is_admin`) pass every policy, a tenant user acts for its own project.
//! * `trusted_headers`: `X-Roles` (comma-separated; `admin` makes an admin) and `X-Project-Id`
//!   as an authenticating proxy (Keystone middleware) sets them, honoured only on connections
//!   from `rating.trusted_proxies`; anyone else is refused (401). `X-Identity-Status` (set by
//!   keystonemiddleware's auth_token, also with `delay_auth_decision`) is honoured: anything but
//!   `Confirmed` is a 401, whatever the other headers say. A proxied request with no identity
//!   is refused with a 401 that names the proxy's headers (not vmmon's session login).
//! * `noauth`: every check passes and the caller has no project (upstream's noauth).

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::Fault;
use crate::app::App;
use crate::rating::RatingAuth;

/// Session id header (and the token header behind a proxy, which vmmon ignores there).
pub const TOKEN_HEADER: &str = "x-auth-token";
/// Roles set by a trusted proxy.
pub const ROLES_HEADER: &str = "x-roles";
/// Project set by a trusted proxy.
pub const PROJECT_HEADER: &str = "x-project-id";
/// keystonemiddleware's verdict on the token: `Confirmed` or `Invalid`.
pub const IDENTITY_STATUS_HEADER: &str = "x-identity-status";
/// Longest accepted token or header value.
const MAX_HEADER_LEN: usize = 256;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `rating.auth = "noauth"`: everything is allowed.
    NoAuth,
    /// No credentials.
    Anonymous,
    /// Credentials that do not check out (why).
    Invalid(String),
    /// An identified user.
    User {
        /// Passes admin policies.
        admin: bool,
        /// The project it acts for.
        project: Option<String>,
        /// The login session it came with (`auth = "session"`).
        session_id: Option<String>,
    },
}

impl Caller {
    /// The caller's project (None for noauth, anonymous and project-less admins).
    pub fn project(&self) -> Option<&str> {
        match self {
            Caller::User { project, .. } => project.as_deref(),
            _ => None,
        }
    }

    /// Whether admin policies pass.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::NoAuth | Caller::User { admin: true, .. })
    }

    fn unauthenticated(&self) -> Option<Fault> {
        match self {
            Caller::Anonymous => Some(Fault::unauthorized(
                "Authentication required: send X-Auth-Token with a session id from login \
                 (POST /wsgi_app.py, method 458753)",
            )),
            Caller::Invalid(why) => Some(Fault::unauthorized(why)),
            _ => None,
        }
    }

    /// An admin-only policy (`rule` names it in the 403 message).
    pub fn require_admin(&self, rule: &str) -> Result<(), Fault> {
        if let Some(f) = self.unauthenticated() {
            return Err(f);
        }
        if self.is_admin() {
            Ok(())
        } else {
            Err(Fault::policy(rule))
        }
    }

    /// A reader-or-admin policy on `target` (a tenant; None means all tenants, admin only).
    pub fn require_reader(&self, rule: &str, target: Option<&str>) -> Result<(), Fault> {
        if let Some(f) = self.unauthenticated() {
            return Err(f);
        }
        if self.is_admin() {
            return Ok(());
        }
        match (self.project(), target) {
            (Some(own), Some(t)) if own == t => Ok(()),
            _ => Err(Fault::policy(rule)),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match headers.get(name).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) if v.trim().is_empty() => Ok(None),
        Some(Ok(v)) if v.len() <= MAX_HEADER_LEN => Ok(Some(v.trim())),
        Some(_) => Err(format!("{name} is not a valid header value")),
    }
}

/// Identifies the caller of a request from `peer` (None in process, without a socket).
pub async fn identify(
    app: &App,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Caller, Fault> {
    let settings = app.settings();
    match settings.config.rating.auth {
        RatingAuth::Noauth => Ok(Caller::NoAuth),
        RatingAuth::TrustedHeaders => {
            let trusted = peer.is_some_and(|ip| {
                settings
                    .config
                    .rating
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&ip))
            });
            if !trusted {
                return Ok(Caller::Invalid(
                    "identity headers are only accepted from the configured trusted proxies".into(),
                ));
            }
            let status =
                header(headers, IDENTITY_STATUS_HEADER).map_err(|e| Fault::unauthorized(&e))?;
            if let Some(s) = status
                && !s.eq_ignore_ascii_case("confirmed")
            {
                return Ok(Caller::Invalid(format!(
                    "The request you have made requires authentication: the authenticating proxy \
                     reports X-Identity-Status: {s} (send a valid Keystone token)"
                )));
            }
            let roles = header(headers, ROLES_HEADER).map_err(|e| Fault::unauthorized(&e))?;
            let project = header(headers, PROJECT_HEADER).map_err(|e| Fault::unauthorized(&e))?;
            if roles.is_none() && project.is_none() {
                return Ok(Caller::Invalid(
                    "The request you have made requires authentication: the authenticating proxy \
                     sent no identity (X-Roles / X-Project-Id; send a Keystone token)"
                        .into(),
                ));
            }
            let admin = roles
                .unwrap_or("")
                .split(',')
                .any(|r| r.trim().eq_ignore_ascii_case("admin"));
            Ok(Caller::User {
                admin,
                project: project.map(str::to_string),
                session_id: None,
            })
        }
        RatingAuth::Session => {
            let sid = match header(headers, TOKEN_HEADER) {
                Ok(Some(s)) => s.to_string(),
                Ok(None) => return Ok(Caller::Anonymous),
                Err(_) => {
                    return Ok(Caller::Invalid(
                        "X-Auth-Token must be the session_id returned by login".into(),
                    ));
                }
            };
            let user = crate::auth::session_user(
                &app.store,
                app.settings().config.session_idle_ms(),
                &sid,
            )
            .await
            .map_err(Fault::store)?;
            let Some(user) = user else {
                return Ok(Caller::Invalid(
                    "X-Auth-Token is expired or unknown: log in again (method 458753)".into(),
                ));
            };
            Ok(Caller::User {
                admin: user.is_admin,
                project: user.project,
                session_id: Some(user.session_id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)]
    fn policies() {
        let admin = Caller::User {
            admin: true,
            project: None,
            session_id: None,
        };
        let tenant = Caller::User {
            admin: false,
            project: Some("p1".into()),
            session_id: None,
        };
        let invalid = Caller::Invalid("x".into());
        let cases: Vec<(&Caller, Option<&str>, Option<u16>, Option<u16>)> = vec![
            // caller, target, admin policy → error status, reader policy → error status
            (&Caller::NoAuth, None, None, None),
            (&admin, None, None, None),
            (&admin, Some("p2"), None, None),
            (&tenant, Some("p1"), Some(403), None),
            (&tenant, Some("p2"), Some(403), Some(403)),
            (&tenant, None, Some(403), Some(403)),
            (&Caller::Anonymous, Some("p1"), Some(401), Some(401)),
            (&invalid, Some("p1"), Some(401), Some(401)),
        ];
        for (caller, target, want_admin, want_reader) in cases {
            let a = caller.require_admin("r").err().map(|f| f.status.as_u16());
            let r = caller
                .require_reader("r", target)
                .err()
                .map(|f| f.status.as_u16());
            assert_eq!((a, r), (want_admin, want_reader), "{caller:?} {target:?}");
        }
        assert_eq!(
            tenant
                .require_admin("rating:list_modules")
                .unwrap_err()
                .message,
            "Policy doesn't allow rating:list_modules to be performed."
        );
    }
}
