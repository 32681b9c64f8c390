//! Secrets from AWS SSM Parameter Store: an argument written `ssm:/path/name` by a trusted source (the operator's
//! `rune run --arg`, a literal argument of a rule file) is a reference, resolved when the run is about to start
//! (`GetParameter` with decryption: SecureString values come back in clear), cached for a bounded time, and never
//! logged or published — decisions and results show the reference, only the plugin sees the value.
//!
//! A value rendered from alert data is never a reference, whatever it looks like: an alert cannot make RUNE read
//! a parameter. Chatops arguments are never references either.
//!
//! The daemon's settings name secrets the same way (`token_ref: ssm:/…`, read once at start by
//! `config::Settings::resolve_secrets`), and may prefetch whole paths into the cache at start
//! ([`ParameterStore::prefetch`], `GetParametersByPath`), so a storm of runs needing secrets does not ask
//! Parameter Store once per run.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use regex::Regex;
use tokio::time::Instant;

/// What starts a reference.
pub const PREFIX: &str = "ssm:";

/// Parameter names: a path of `/`-separated segments of `[A-Za-z0-9_.-]`, at most 1,011 characters (the API's
/// limit with the leading `/`).
static PATH_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(/[A-Za-z0-9_.-]+)+$").unwrap_or_else(|_| unreachable!()));
const MAX_PATH: usize = 1011;

/// How long a resolved value is reused, and how many are kept.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_CACHED: usize = 1024;

/// `ssm:/path/name`: a Parameter Store parameter by its full path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRef {
    path: String,
}

impl SecretRef {
    /// None when `text` is not a reference (does not start with `ssm:`); an error when it is one but malformed.
    pub fn parse(text: &str) -> Option<Result<SecretRef, String>> {
        let path = text.strip_prefix(PREFIX)?;
        if path.len() > MAX_PATH || !PATH_RE.is_match(path) {
            return Some(Err(format!(
                "`{}` is not a Parameter Store reference: expected ssm:/path/name ([A-Za-z0-9_.-] segments, at most {MAX_PATH} characters)",
                crate::engine::truncate(text, 80)
            )));
        }
        Some(Ok(SecretRef { path: path.to_owned() }))
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.path)
    }
}

/// A resolved value. Debug and Display print a placeholder, so a stray `{:?}` cannot log it.
#[derive(Clone)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// The value itself, for the one place that hands it to the plugin.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Why a reference could not be resolved. Messages name the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0}: no such parameter")]
    NotFound(SecretRef),
    #[error("secret {0}: access denied ({1})")]
    Denied(SecretRef, String),
    #[error("secret {0}: Parameter Store unavailable ({1})")]
    Unavailable(SecretRef, String),
    /// Reading every parameter under a path ([`ParameterStore::prefetch`]) was refused.
    #[error("secrets under {0}: access denied ({1})")]
    PathDenied(String, String),
    #[error("secrets under {0}: Parameter Store unavailable ({1})")]
    PathUnavailable(String, String),
}

/// What [`ParameterStore::prefetch`] put into the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetched {
    /// Parameters cached.
    pub cached: usize,
    /// The cache was full before every parameter under the path was read: the rest are read when a run needs
    /// them.
    pub truncated: bool,
}

/// Whether a failed call was refused (IAM, KMS, credentials) or could not be answered, and why — the error code
/// only when refused: AWS's message names the IAM principal and account, which would be published.
enum Failure {
    Denied(String),
    Unavailable(String),
}

fn failure<E, R>(e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let code = e.code().unwrap_or("").to_owned();
    let message = e.message().unwrap_or("").to_owned();
    if code.contains("AccessDenied") || code.contains("KMS") || code.contains("Unrecognized") {
        Failure::Denied(code)
    } else if code.is_empty() {
        Failure::Unavailable(crate::transport::ssm::error_chain(e))
    } else {
        Failure::Unavailable(format!("{code}: {message}"))
    }
}

/// Resolves references through Parameter Store, with a bounded cache. Cloning gives another handle to the same
/// client and cache.
#[derive(Clone)]
pub struct ParameterStore {
    client: Arc<tokio::sync::OnceCell<Client>>,
    /// Used instead of the configuration chain's when set (tests).
    fixed: Option<Client>,
    cache: Arc<std::sync::Mutex<HashMap<SecretRef, (Instant, SecretValue)>>>,
    /// One lookup at a time per reference: runs that miss the cache together wait for the first one's answer
    /// instead of each asking Parameter Store (and being throttled).
    inflight: Arc<std::sync::Mutex<HashMap<SecretRef, Arc<tokio::sync::Mutex<()>>>>>,
    ttl: Duration,
    max_cached: usize,
}

impl Default for ParameterStore {
    fn default() -> ParameterStore {
        ParameterStore {
            client: Arc::default(),
            fixed: None,
            cache: Arc::default(),
            inflight: Arc::default(),
            ttl: DEFAULT_TTL,
            max_cached: DEFAULT_MAX_CACHED,
        }
    }
}

impl fmt::Debug for ParameterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParameterStore").field("ttl", &self.ttl).field("max_cached", &self.max_cached).finish()
    }
}

impl ParameterStore {
    /// A store on the standard AWS configuration's client, with the given cache bounds (a zero `ttl` caches
    /// nothing).
    pub fn new(ttl: Duration, max_cached: usize) -> ParameterStore {
        ParameterStore { ttl, max_cached: max_cached.max(1), ..ParameterStore::default() }
    }

    /// A store on `client` (for tests and a configured endpoint), with the given cache bounds.
    pub fn with_client(client: Client, ttl: Duration, max_cached: usize) -> ParameterStore {
        ParameterStore { fixed: Some(client), ttl, max_cached, ..ParameterStore::default() }
    }

    async fn client(&self) -> &Client {
        if let Some(c) = &self.fixed {
            return c;
        }
        self.client.get_or_init(|| async { Client::new(&crate::transport::ssm::aws_sdk_config(None).await) }).await
    }

    /// The parameter's value (decrypted), from the cache while it is fresh.
    pub async fn get(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        if let Some(value) = self.fresh(reference) {
            return Ok(value);
        }
        let turn = {
            let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inflight.entry(reference.clone()).or_default().clone()
        };
        let result = {
            let _turn = turn.lock().await;
            match self.fresh(reference) {
                Some(value) => Ok(value),
                None => self.fetch(reference).await,
            }
        };
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight.get(reference).is_some_and(|t| Arc::strong_count(t) <= 2) {
            inflight.remove(reference);
        }
        result
    }

    /// The cached value while it is fresh.
    fn fresh(&self, reference: &SecretRef) -> Option<SecretValue> {
        let now = Instant::now();
        self.lock()
            .get(reference)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, value)| value.clone())
    }

    /// Asks Parameter Store and caches the answer.
    async fn fetch(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        let answer = self.client().await.get_parameter().name(reference.path()).with_decryption(true).send().await;
        let value = match answer {
            Ok(out) => match out.parameter().and_then(|p| p.value()) {
                Some(v) => SecretValue(Arc::from(v)),
                None => return Err(SecretError::NotFound(reference.clone())),
            },
            Err(e) => {
                if matches!(e.as_service_error(), Some(GetParameterError::ParameterNotFound(_))) {
                    return Err(SecretError::NotFound(reference.clone()));
                }
                return Err(match failure(&e) {
                    Failure::Denied(code) => SecretError::Denied(reference.clone(), code),
                    Failure::Unavailable(why) => SecretError::Unavailable(reference.clone(), why),
                });
            }
        };
        let now = Instant::now();
        let mut cache = self.lock();
        if cache.len() >= self.max_cached {
            cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
            if cache.len() >= self.max_cached
                && let Some(oldest) = cache.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(reference.clone(), (now, value.clone()));
        Ok(value)
    }

    /// Reads every parameter under `path` (`/rune/prod`, recursively, decrypted, page by page) into the cache,
    /// where each gets the normal TTL; a run that later misses the cache asks `GetParameter` as usual. Never
    /// evicts: it stops when the cache is full (`truncated`). Nothing under the path is not an error.
    pub async fn prefetch(&self, path: &str) -> Result<Prefetched, SecretError> {
        // `/rune/prod/` and `/rune/prod` are the same hierarchy; `/` alone is every parameter.
        let path = match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        let shown = format!("{PREFIX}{path}");
        let mut budget = {
            let now = Instant::now();
            let mut cache = self.lock();
            cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
            self.max_cached.saturating_sub(cache.len())
        };
        let mut pages = self
            .client()
            .await
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .into_paginator()
            .page_size(10)
            .send();
        let mut done = Prefetched { cached: 0, truncated: false };
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| match failure(&e) {
                Failure::Denied(code) => SecretError::PathDenied(shown.clone(), code),
                Failure::Unavailable(why) => SecretError::PathUnavailable(shown.clone(), why),
            })?;
            let now = Instant::now();
            let mut cache = self.lock();
            for parameter in page.parameters() {
                let (Some(name), Some(value)) = (parameter.name(), parameter.value()) else { continue };
                // A name outside the reference syntax cannot be asked for: not worth a slot.
                let Some(Ok(reference)) = SecretRef::parse(&format!("{PREFIX}{name}")) else { continue };
                if !cache.contains_key(&reference) {
                    if budget == 0 {
                        done.truncated = true;
                        return Ok(done);
                    }
                    budget -= 1;
                }
                cache.insert(reference, (now, SecretValue(Arc::from(value))));
                done.cached += 1;
            }
        }
        Ok(done)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SecretRef, (Instant, SecretValue)>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries in the cache (fresh or not yet swept).
    pub fn cached(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised_and_validated() {
        assert_eq!(SecretRef::parse("plain"), None);
        assert_eq!(SecretRef::parse("/ssm:/x"), None);
        let ok = SecretRef::parse("ssm:/prod/db/password").unwrap().unwrap();
        assert_eq!((ok.path(), ok.to_string().as_str()), ("/prod/db/password", "ssm:/prod/db/password"));
        for bad in ["ssm:", "ssm:relative", "ssm:/a b", "ssm:/a//b", "ssm:/a/", "ssm:/$(id)", "ssm:/a\n"] {
            assert!(matches!(SecretRef::parse(bad), Some(Err(_))), "{bad:?}");
        }
        let long = format!("ssm:/{}", "a".repeat(MAX_PATH));
        assert!(matches!(SecretRef::parse(&long), Some(Err(_))));
    }

    mod store {
        use super::super::*;
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::error::ErrorMetadata;
        use aws_sdk_ssm::operation::get_parameter::GetParameterOutput;
        use aws_sdk_ssm::types::Parameter;
        use aws_sdk_ssm::types::error::ParameterNotFound;
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        fn reference(path: &str) -> SecretRef {
            SecretRef::parse(&format!("ssm:{path}")).unwrap().unwrap()
        }

        fn value(v: &'static str) -> impl Fn() -> GetParameterOutput {
            move || GetParameterOutput::builder().parameter(Parameter::builder().value(v).build()).build()
        }

        #[tokio::test(start_paused = true)]
        async fn values_are_cached_for_their_ttl_and_fetched_once_when_runs_miss_together() {
            let rule = mock!(Client::get_parameter)
                .match_requests(|r| r.name() == Some("/a") && r.with_decryption() == Some(true))
                .sequence()
                .output(value("one"))
                .output(value("two"))
                .build();
            let client =
                mock_client!(aws_sdk_ssm, RuleMode::Sequential, [&rule], |b| b.retry_config(RetryConfig::disabled()));
            let store = ParameterStore::with_client(client, Duration::from_secs(60), 8);
            let r = reference("/a");
            let (x, y, z) = tokio::join!(store.get(&r), store.get(&r), store.get(&r));
            for v in [x, y, z] {
                assert_eq!(v.unwrap().expose(), "one");
            }
            assert_eq!(rule.num_calls(), 1, "one lookup for three runs");
            tokio::time::advance(Duration::from_secs(61)).await;
            assert_eq!(store.get(&r).await.unwrap().expose(), "two", "stale after the TTL");
        }

        #[tokio::test(start_paused = true)]
        async fn errors_name_the_reference_and_the_code_only() {
            let not_found = mock!(Client::get_parameter)
                .then_error(|| GetParameterError::ParameterNotFound(ParameterNotFound::builder().build()));
            let denied = mock!(Client::get_parameter).then_error(|| {
                GetParameterError::generic(
                    ErrorMetadata::builder()
                        .code("AccessDeniedException")
                        .message("User: arn:aws:iam::123456789012:role/rune is not authorized")
                        .build(),
                )
            });
            let kms = mock!(Client::get_parameter).then_error(|| {
                GetParameterError::generic(
                    ErrorMetadata::builder().code("KMSAccessDeniedException").message("k").build(),
                )
            });
            let client = mock_client!(aws_sdk_ssm, RuleMode::Sequential, [&not_found, &denied, &kms], |b| b
                .retry_config(RetryConfig::disabled()));
            let store = ParameterStore::with_client(client, Duration::ZERO, 8);
            assert_eq!(store.get(&reference("/x")).await.unwrap_err(), SecretError::NotFound(reference("/x")));
            let e = store.get(&reference("/y")).await.unwrap_err();
            assert_eq!(e, SecretError::Denied(reference("/y"), "AccessDeniedException".into()));
            assert!(!e.to_string().contains("123456789012"), "no account or principal in what is published: {e}");
            assert!(matches!(store.get(&reference("/z")).await, Err(SecretError::Denied(..))));
        }

        #[tokio::test]
        async fn a_refused_prefetch_names_the_path_and_the_code_only() {
            use aws_sdk_ssm::operation::get_parameters_by_path::GetParametersByPathError;
            let denied = mock!(Client::get_parameters_by_path)
                .match_requests(|r| {
                    r.path() == Some("/rune/prod") && r.recursive() == Some(true) && r.with_decryption() == Some(true)
                })
                .then_error(|| {
                    GetParametersByPathError::generic(
                        ErrorMetadata::builder()
                            .code("AccessDeniedException")
                            .message("User: arn:aws:iam::123456789012:role/rune is not authorized")
                            .build(),
                    )
                });
            let client =
                mock_client!(aws_sdk_ssm, RuleMode::Sequential, [&denied], |b| b.retry_config(RetryConfig::disabled()));
            let store = ParameterStore::with_client(client, Duration::from_secs(60), 8);
            let e = store.prefetch("/rune/prod/").await.unwrap_err();
            assert_eq!(e, SecretError::PathDenied("ssm:/rune/prod".into(), "AccessDeniedException".into()));
            assert_eq!(e.to_string(), "secrets under ssm:/rune/prod: access denied (AccessDeniedException)");
            assert_eq!(store.cached(), 0);
        }
    }

    #[test]
    fn values_do_not_print() {
        let v = SecretValue(Arc::from("hunter2"));
        assert!(!format!("{v:?}").contains("hunter2"));
        assert_eq!(v.expose(), "hunter2");
    }
}
