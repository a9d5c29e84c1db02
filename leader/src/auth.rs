//! Every check of who is calling the leader, in one place: a member (the cluster
//! token on gRPC), an API client (the API token as a bearer header), a person on the
//! status page (a session cookie made from the API token, and the form token of its
//! one action). Secrets are compared in constant time
//! (`kiln_core::digest::same_secret`); a session holds a digest of the token and its
//! expiry, never the token.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::service::LeaderState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kiln_session";

/// How long a session lasts; then the page asks for the token again.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// What the session cookie holds for `token` until `expires` (Unix seconds): the
/// expiry and a digest keyed by the token, so the browser never keeps the token
/// itself and a stolen cookie stops working.
pub fn session_of(token: &str, expires: u64) -> String {
    let digest = Sha256::digest(format!("kiln-ui-session\0{expires}\0{token}").as_bytes());
    format!("{expires}.{}", hex::encode(digest))
}

/// Whether the cookie value `session` was made from `token` and has not expired
/// at `now` (Unix seconds).
pub fn session_valid(session: &str, token: &str, now: u64) -> bool {
    let Some(expires) = session.split_once('.').and_then(|(e, _)| e.parse::<u64>().ok()) else { return false };
    now < expires
        && expires <= now.saturating_add(SESSION_LIFETIME.as_secs())
        && kiln_core::digest::same_secret(session, &session_of(token, expires))
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The form token of the cancel button, derived from the session.
pub(crate) fn form_token(token: &str) -> String {
    hex::encode(Sha256::digest(format!("kiln-ui-form\0{token}").as_bytes()))
}

/// The session cookie's value in `headers`, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// Whether the request may see the page: no token is wanted, or it carries the
/// token (a bearer header) or a session made from it.
pub fn signed_in(state: &LeaderState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.config.api_token else { return true };
    bearer_matches(headers, expected) || session_cookie(headers).is_some_and(|s| session_valid(s, expected, unix_now()))
}

/// Whether the request carries the API token (always, when the API is open).
pub(crate) fn authorized(state: &LeaderState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.config.api_token else { return true };
    bearer_matches(headers, expected)
}

/// Whether `headers` carry `Authorization: Bearer <expected>`.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|presented| kiln_core::digest::same_secret(presented, expected))
}

/// Refuses calls that do not carry `authorization: Bearer <cluster token>`.
pub fn check_token(token: Arc<str>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let presented = request
            .metadata()
            .get(kiln_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(presented) if kiln_core::digest::same_secret(presented, &token) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster token: every member must use the same token (KILN_CLUSTER_TOKEN or --cluster-token-file)",
            )),
            None => Err(Status::unauthenticated(
                "missing cluster token: members send it as `authorization: Bearer <token>`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_found_among_others_and_is_not_the_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; kiln_session=abc; b=2"));
        assert_eq!(session_cookie(&headers), Some("abc"));
        assert!(!session_of("secret", 100).contains("secret"));
        assert_ne!(session_of("secret", 100), form_token("secret"));
    }

    #[test]
    fn a_session_expires_and_cannot_be_stretched_or_forged() {
        let now = 1_000_000;
        let session = session_of("secret", now + 60);
        assert!(session_valid(&session, "secret", now));
        assert!(!session_valid(&session, "secret", now + 60), "expired");
        assert!(!session_valid(&session, "other", now), "another token's farm");
        let stretched = session.replacen(&(now + 60).to_string(), &(now + 999_999).to_string(), 1);
        assert!(!session_valid(&stretched, "secret", now), "its expiry is under the digest");
        let far = session_of("secret", now + 10 * SESSION_LIFETIME.as_secs());
        assert!(!session_valid(&far, "secret", now), "no session outlives the lifetime");
        for hostile in ["", ".", "abc", "99999999999999999999999.x", &session_of("secret", 0)] {
            assert!(!session_valid(hostile, "secret", now), "{hostile}");
        }
    }
}
