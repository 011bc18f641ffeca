//! Who is calling: the bearer key's [`Principal`], and its rate limit.
//!
//! The [`Caller`] extractor runs before any handler reads the body: a request without a valid
//! key costs a hash and a map lookup, never a parse or a store read. Its rejections are problem
//! documents (401, 429) like every other error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::api::AppState;
use crate::keys::{Action, Principal};
use crate::problem::{Cause, Problem};

/// The request id header (set by the server when the client sent none).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, as the `X-Request-Id` header carries it.
pub fn request_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An authenticated request: the key's owner and the request id.
pub struct Caller {
    /// The key's owner.
    pub principal: Arc<Principal>,
    /// The request id (for problem documents).
    pub request_id: Option<String>,
}

impl Caller {
    /// 403 unless the key's scopes allow `action`.
    pub fn require(&self, action: Action<'_>) -> Result<(), Problem> {
        if self.principal.may(action) {
            return Ok(());
        }
        Err(self.problem(
            Cause::Forbidden,
            format!(
                "key `{}` (scopes {}) may not {}",
                self.principal.name,
                self.principal
                    .scopes
                    .iter()
                    .map(|s| s.to_text())
                    .collect::<Vec<_>>()
                    .join(", "),
                action.describe()
            ),
        ))
    }

    /// A problem naming this request.
    pub fn problem(&self, cause: Cause, detail: impl Into<String>) -> Problem {
        Problem::new(cause, detail).at(self.request_id.as_deref())
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, Problem> {
        let request_id = request_id(parts);
        let fail = |cause, detail: &str| Problem::new(cause, detail).at(request_id.as_deref());
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            fail(
                Cause::Unauthorized,
                "no Authorization header: send `Authorization: Bearer <key>`",
            )
        })?;
        let key = value
            .to_str()
            .ok()
            // The scheme is case-insensitive (RFC 9110 section 11.1): `bearer` is `Bearer`.
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty())
            .map(|(_, key)| key)
            .ok_or_else(|| {
                fail(
                    Cause::Unauthorized,
                    "the Authorization header must be `Bearer <key>`",
                )
            })?;
        let principal = state.keys.principal(key.trim()).ok_or_else(|| {
            fail(
                Cause::Unauthorized,
                "the API key is not known to this server",
            )
        })?;
        if let Err(wait_secs) = state.limiter.take(&principal.name) {
            metrics::counter!("walletd_rate_limited_total").increment(1);
            return Err(fail(
                Cause::RateLimited,
                &format!(
                    "key `{}` is over its limit of {} requests per second",
                    principal.name, state.config.rate_limit_per_sec
                ),
            )
            .retry_after(wait_secs));
        }
        Ok(Caller {
            principal,
            request_id,
        })
    }
}

/// A token bucket per key: `rate` tokens per second, at most `rate` saved up.
pub struct RateLimiter {
    rate_per_sec: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `rate_per_sec` per key; 0 allows everything.
    pub fn new(rate_per_sec: u32) -> RateLimiter {
        RateLimiter {
            rate_per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how many seconds until one is there.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        if self.rate_per_sec == 0 {
            return Ok(());
        }
        let rate = f64::from(self.rate_per_sec);
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update of a counter: the
        // buckets are still usable numbers.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Whole seconds for Retry-After, at least 1.
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a key gets its burst, then is refused with a Retry-After of at least a second,
    // while another key is unaffected; 0 means no limit.
    #[test]
    fn a_key_gets_its_burst_then_waits_and_keys_are_separate() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(limiter.take("a"), Ok(()));
        }
        assert_eq!(limiter.take("a"), Err(1));
        assert_eq!(limiter.take("b"), Ok(()));
        let open = RateLimiter::new(0);
        for _ in 0..10_000 {
            assert_eq!(open.take("a"), Ok(()));
        }
    }
}
