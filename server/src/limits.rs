//! Limits: the per-IP token bucket for log-in and sign-up ([`RateLimiter`], applied by the [`AuthRateLimit`]
//! extractor before the body is read), what each key holds at once ([`Slots`]: provider connections per
//! address, uploads and live-update streams per account), and the middlewares and answers that bound every
//! request (the global concurrency limit, the timeout, caught panics).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::error::AppError;
use crate::extract::ClientIp;
use crate::state::AppState;

/// Above this many tracked addresses, buckets that have refilled completely are dropped.
const MAX_TRACKED_IPS: usize = 10_000;

/// A token bucket per client IP: `burst` attempts at once, refilled at `per_minute`.
///
/// Uses `tokio::time::Instant` so that tests can pause time instead of sleeping.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    /// A std mutex: nothing awaits while it is held.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter allowing `burst` attempts at once and `per_minute` sustained, per IP.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self { burst: f64::from(burst), per_sec: f64::from(per_minute) / 60.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one attempt from `ip`'s bucket.
    ///
    /// # Errors
    /// [`AppError::RateLimited`] with the whole seconds until an attempt is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), AppError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_IPS {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, b| b.tokens + per_sec * now.duration_since(b.updated).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket { tokens: self.burst, updated: now });
        let refilled = bucket.tokens + self.per_sec * now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = refilled.min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_secs = ((1.0 - bucket.tokens) / self.per_sec).ceil().max(1.0);
            // Bounded by 60 s per token at the slowest allowed rate (1 per minute).
            Err(AppError::RateLimited { retry_after_secs: wait_secs as u64 })
        }
    }
}

/// An extractor that spends one log-in/sign-up attempt of the client's IP, or rejects with 429 and
/// `Retry-After`. Put it before the body extractor so that refused requests cost nothing.
#[derive(Debug, Clone, Copy)]
pub struct AuthRateLimit;

impl FromRequestParts<AppState> for AuthRateLimit {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        state.auth_limiter().check(ip)?;
        Ok(Self)
    }
}

/// Counts what each key (a client address, an account) holds at once, under a bound given at each
/// [`Slots::acquire`]; a [`Slot`] gives its place back when dropped.
#[derive(Debug)]
pub struct Slots<K: Eq + Hash + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Default for Slots<K> {
    fn default() -> Self {
        Self { held: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// A place for `key` if it holds fewer than `max`.
    pub fn acquire(&self, key: &K, max: usize) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot { held: Arc::clone(&self.held), key: key.clone() })
    }

    /// How many places `key` holds.
    pub fn count(&self, key: &K) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }
}

/// One place of a key in [`Slots`], held until dropped.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The global concurrency limit, as a middleware: a request holds one of `concurrency_limit` permits until its
/// response's head is ready, and is answered 503 `overloaded` at once when none is free. Dataset uploads and
/// commits take none: they may last minutes, so they are bounded by their own budgets instead (per account and
/// in all, see `api::datasets`), and silent ones cannot starve every other route. A live-update stream gives its
/// permit back once its head is sent; streams are bounded by their own budgets (per account and in all, see
/// `api::events`).
pub async fn concurrency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_dataset_transfer(&request) {
        return next.run(request).await;
    }
    let Ok(_permit) = state.concurrency().try_acquire_owned() else {
        metrics::counter!("http_requests_refused_total", "reason" => "overloaded").increment(1);
        return AppError::Overloaded.into_response();
    };
    next.run(request).await
}

/// Answers a handler's panic with a 500 in the error shape, logging the panic message once.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    AppError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// The request timeout layer: answers 503 `timeout` when a request takes longer than `request_timeout_ms`,
/// except a dataset upload or commit (`PUT /api/projects/{id}/dataset/{part}`, `POST .../dataset/commit`),
/// whose size is bounded by `max_upload_bytes` instead and which may take minutes.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_dataset_transfer(&request) {
        return next.run(request).await;
    }
    match tokio::time::timeout(request_timeout(&state), next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_refused_total", "reason" => "timeout").increment(1);
            AppError::Timeout.into_response()
        }
    }
}

fn is_dataset_transfer(request: &Request) -> bool {
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    matches!(segments.as_slice(), ["", "api", "projects", _, "dataset", _])
        && (request.method() == Method::PUT || request.method() == Method::POST)
}

/// The request timeout as a `Duration`.
pub fn request_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.settings().request_timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_at_the_sustained_rate() {
        let limiter = RateLimiter::new(2, 6); // one attempt every 10 s
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_ok());
        let Err(AppError::RateLimited { retry_after_secs }) = limiter.check(ip) else { panic!("expected 429") };
        assert_eq!(retry_after_secs, 10);
        assert!(limiter.check("192.0.2.2".parse().unwrap()).is_ok(), "another IP has its own bucket");
        tokio::time::advance(Duration::from_secs(5)).await;
        let Err(AppError::RateLimited { retry_after_secs }) = limiter.check(ip) else { panic!("expected 429") };
        assert_eq!(retry_after_secs, 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_err());
    }
}
