//! An identity provider's published keys (a JWK Set, RFC 7517 §5): fetched, cached and kept
//! fresh without letting the tokens that arrive decide how often the provider is asked.
//!
//! A token only names a key (`kid`); anyone can send one naming a key that does not exist, as
//! often as they like, and without a token's signature being checked first. So:
//!
//! - **One fetch at a time** (single flight). A token whose key is in the set in hand is
//!   answered from it, whatever fetch is under way; one whose key is not waits for the fetch
//!   under way, if any, rather than starting its own.
//! - **Refreshed in the background**, a little before `refresh_seconds` is up, so that requests
//!   do not wait for the provider. Only if that refresh is late does the first request to find
//!   the set stale fetch it itself (a withdrawn key must stop working once the set is stale);
//!   the others meanwhile are answered from the set in hand.
//! - **Backoff after a failure**: 1 s, doubling to 5 minutes, during which nothing fetches,
//!   neither the background task nor tokens naming an unknown key. The last good set is served
//!   meanwhile: an unreachable provider does not lock out the callers it has already issued
//!   tokens to.
//! - **An unknown key fetches the set at most every 10 s**, as after a rotation, and a key id
//!   that a fresh set did not contain is remembered for 5 minutes (up to 1,024 of them), so a
//!   token with a made-up key id causes one fetch, not one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};

use crate::config::ProviderConfig;
use crate::report::Chain;

/// The shortest time between two fetches forced by an unknown key id.
const FORCED_REFRESH: Duration = Duration::from_secs(10);
/// How long a key id that a freshly fetched set did not contain is refused without a fetch.
const UNKNOWN_KEY_MEMORY: Duration = Duration::from_secs(5 * 60);
/// The most unknown key ids remembered; beyond it, [`FORCED_REFRESH`] alone limits fetches.
const UNKNOWN_KEYS_REMEMBERED: usize = 1024;
/// The wait after a first failed fetch; it doubles with each failure that follows.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at a failing provider.
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The longest key id looked up (and remembered); real ones are thumbprints or UUIDs.
pub(crate) const MAX_KEY_ID_CHARS: usize = 256;

/// Why an identity provider's key set could not be loaded.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    /// The provider could not be reached, or its answer not read.
    #[error(transparent)]
    Fetch(#[from] reqwest::Error),
    /// The provider answered with an error status.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The key set's file could not be read.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// What was fetched is not a JWK set.
    #[error("not a JWK set")]
    NotJwks(#[from] serde_json::Error),
}

/// What is known of a provider's keys: the last good set, the fetches' history, the key ids
/// found missing. Pure: the time is passed in, so that the rules above are tested without
/// waiting.
#[derive(Debug, Default)]
struct KeyCache {
    /// The last set fetched successfully.
    set: Option<JwkSet>,
    /// When it was fetched.
    fetched: Option<Instant>,
    /// Failed fetches since the last success.
    failures: u32,
    /// No fetch before this time (after a failure).
    retry_at: Option<Instant>,
    /// The last fetch forced by an unknown key id.
    last_forced: Option<Instant>,
    /// Key ids a fresh set did not contain, each with the time it is forgotten.
    unknown: HashMap<String, Instant>,
}

impl KeyCache {
    fn find(&self, kid: &str) -> Option<Jwk> {
        self.set.as_ref().and_then(|set| set.find(kid)).cloned()
    }

    /// Whether the set is `refresh` old, or was never fetched.
    fn stale(&self, now: Instant, refresh: Duration) -> bool {
        self.fetched.is_none_or(|at| now.saturating_duration_since(at) >= refresh)
    }

    /// Whether a failed fetch's backoff is still running.
    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }

    /// Whether `kid` was missing from a fresh set not long ago.
    fn known_unknown(&self, kid: &str, now: Instant) -> bool {
        self.unknown.get(kid).is_some_and(|until| now < *until)
    }

    /// Whether an unknown key id may fetch the set now; if so, counts this as that fetch.
    fn force(&mut self, now: Instant) -> bool {
        let allowed = !self.backing_off(now)
            && self.last_forced.is_none_or(|at| now.saturating_duration_since(at) >= FORCED_REFRESH);
        if allowed {
            self.last_forced = Some(now);
        }
        allowed
    }

    /// When the background task fetches next: when the backoff ends, or a little before the
    /// set goes stale, so that requests find it fresh.
    fn next_refresh(&self, now: Instant, refresh: Duration) -> Instant {
        match (self.retry_at, self.fetched) {
            (Some(at), _) => at,
            (None, Some(at)) => at.checked_add(refresh.saturating_sub(early(refresh))).unwrap_or(at),
            (None, None) => now,
        }
    }

    /// Takes a freshly fetched set.
    fn loaded(&mut self, set: JwkSet, now: Instant) {
        self.set = Some(set);
        self.fetched = Some(now);
        self.failures = 0;
        self.retry_at = None;
    }

    /// Counts a failed fetch; answers how long until the next attempt.
    fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures);
        self.retry_at = Some(now.checked_add(wait).unwrap_or(now));
        wait
    }

    /// Remembers that a set fetched just now does not contain `kid`.
    fn remember_unknown(&mut self, kid: &str, now: Instant) {
        if self.unknown.len() >= UNKNOWN_KEYS_REMEMBERED {
            self.unknown.retain(|_, until| now < *until);
        }
        if self.unknown.len() < UNKNOWN_KEYS_REMEMBERED {
            self.unknown.insert(kid.to_owned(), now.checked_add(UNKNOWN_KEY_MEMORY).unwrap_or(now));
        }
    }
}

/// The wait before the next attempt after `failures` failed fetches in a row.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// How long before a set goes stale the background task fetches it again: a tenth of the
/// refresh interval, at most 5 s.
fn early(refresh: Duration) -> Duration {
    (refresh / 10).min(Duration::from_secs(5))
}

/// One identity provider's keys, shared by the requests that verify its tokens and the task
/// that keeps them fresh.
pub(crate) struct ProviderKeys {
    issuer: String,
    jwks: String,
    refresh: Duration,
    client: reqwest::Client,
    cache: Mutex<KeyCache>,
    /// Held for the duration of a fetch: one at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Counts the changes of the key set: a token verified under an earlier generation is
    /// verified again (the token cache keeps the generation it was verified under).
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys").field("issuer", &self.issuer).field("jwks", &self.jwks).finish()
    }
}

impl ProviderKeys {
    /// Fetches the provider's keys once (a provider that cannot be reached is retried after a
    /// backoff), and starts the task that keeps them fresh; it ends when the keys are dropped.
    pub(crate) async fn start(config: &ProviderConfig, client: reqwest::Client) -> Arc<Self> {
        let keys = Arc::new(Self {
            issuer: config.issuer.clone(),
            jwks: config.jwks.clone(),
            refresh: Duration::from_secs(config.refresh_seconds),
            client,
            cache: Mutex::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        {
            let fetching = keys.fetching.lock().await;
            keys.refresh(&fetching).await;
        }
        tokio::spawn(keep_fresh(Arc::downgrade(&keys)));
        keys
    }

    /// The key set's generation, while the set is fresh (`None` once it is stale, when a
    /// request fetches it again before trusting it): changes whenever a fetched set differs from
    /// the one before.
    pub(crate) fn fresh_generation(&self) -> Option<u64> {
        let fresh = !self.cache().stale(Instant::now(), self.refresh);
        fresh.then(|| self.generation.load(std::sync::atomic::Ordering::Acquire))
    }

    fn cache(&self) -> MutexGuard<'_, KeyCache> {
        // The cache is consistent after every statement: a panic elsewhere leaves nothing half
        // done in it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let jwks = &self.jwks;
        let bytes = if jwks.starts_with("http://") || jwks.starts_with("https://") {
            let response = self.client.get(jwks).send().await?;
            if !response.status().is_success() {
                return Err(JwksError::Status(response.status()));
            }
            response.bytes().await?.to_vec()
        } else {
            tokio::fs::read(jwks).await?
        };
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Fetches the set; the caller holds the fetch lock (`_fetching`), so that this is the only
    /// fetch under way.
    async fn refresh(&self, _fetching: &tokio::sync::MutexGuard<'_, ()>) {
        let result = self.fetch().await;
        let now = Instant::now();
        match result {
            Ok(set) => {
                let kids = |set: &JwkSet| set.keys.iter().map(|k| k.common.key_id.clone()).collect::<Vec<_>>();
                metrics::counter!(crate::metrics::JWKS_REFRESHES, "result" => "ok").increment(1);
                let mut cache = self.cache();
                if cache.set.as_ref().map(kids) != Some(kids(&set)) {
                    tracing::info!(issuer = %self.issuer, keys = ?kids(&set), "identity provider keys loaded");
                } else {
                    tracing::debug!(issuer = %self.issuer, "identity provider keys unchanged");
                }
                if cache.set.as_ref() != Some(&set) {
                    // Any change, a key replaced under the same id too, ends every cached token.
                    self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                cache.loaded(set, now);
            }
            Err(e) => {
                metrics::counter!(crate::metrics::JWKS_REFRESHES, "result" => "failed").increment(1);
                let (wait, serving) = {
                    let mut cache = self.cache();
                    (cache.failed(now), cache.set.is_some())
                };
                tracing::error!(
                    issuer = %self.issuer,
                    jwks = %self.jwks,
                    error = %Chain(&e),
                    retry_in_seconds = wait.as_secs(),
                    serving_last_good_keys = serving,
                    "cannot load the identity provider's keys"
                );
            }
        }
    }

    /// The key `kid`: from the set in hand if it is there; otherwise after the fetch under way,
    /// or one this call starts if the rules of this module allow it. `None` if the provider
    /// does not publish it (as far as can be known now).
    pub(crate) async fn key(&self, kid: &str) -> Option<Jwk> {
        let now = Instant::now();
        let (found, due) = {
            let cache = self.cache();
            (cache.find(kid), cache.stale(now, self.refresh) && !cache.backing_off(now))
        };
        if let Some(jwk) = found {
            // The background refresh is late: the first request to notice fetches (a key the
            // provider withdrew must stop working); the others use the set in hand meanwhile.
            if due && let Ok(fetching) = self.fetching.try_lock() {
                self.refresh(&fetching).await;
                return self.cache().find(kid);
            }
            return Some(jwk);
        }
        if self.cache().known_unknown(kid, now) {
            return None;
        }
        match self.fetching.try_lock() {
            Ok(fetching) => {
                let forced = {
                    let mut cache = self.cache();
                    // A fetch that ended between the look-up above and the lock may have
                    // brought it.
                    if let Some(jwk) = cache.find(kid) {
                        return Some(jwk);
                    }
                    cache.force(now)
                };
                if !forced {
                    return None;
                }
                self.refresh(&fetching).await;
            }
            // A fetch is under way: its set is as fresh as one this call would fetch.
            Err(_) => drop(self.fetching.lock().await),
        }
        let now = Instant::now();
        let mut cache = self.cache();
        let found = cache.find(kid);
        if found.is_none() && cache.failures == 0 {
            cache.remember_unknown(kid, now);
        }
        found
    }
}

/// Fetches the set again a little before it goes stale, or when a backoff ends, for as long as
/// the keys are in use.
async fn keep_fresh(keys: Weak<ProviderKeys>) {
    loop {
        let Some(next) = keys.upgrade().map(|k| k.cache().next_refresh(Instant::now(), k.refresh)) else { return };
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        let Some(keys) = keys.upgrade() else { return };
        let fetching = keys.fetching.lock().await;
        // A fetch while this task waited for the lock (a forced one, say) may have made this
        // one needless.
        let due = keys.cache().next_refresh(Instant::now(), keys.refresh) <= Instant::now();
        if due {
            keys.refresh(&fetching).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kids: &[&str]) -> JwkSet {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": kid}))
            .collect();
        serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn failures_back_off_doubling_to_five_minutes_and_a_success_resets() {
        let t0 = Instant::now();
        let mut cache = KeyCache::default();
        let waits: Vec<u64> = (0..12).map(|_| cache.failed(t0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert!(cache.backing_off(t0 + secs(299)));
        assert!(!cache.force(t0 + secs(299)), "an unknown key id fetches nothing during a backoff");
        assert_eq!(cache.next_refresh(t0, secs(60)), t0 + secs(300));
        assert!(!cache.backing_off(t0 + secs(300)));

        cache.loaded(set(&["a"]), t0 + secs(300));
        assert_eq!((cache.failures, cache.retry_at), (0, None));
        assert_eq!(cache.failed(t0 + secs(400)), secs(1));
        // The last good set is still there to serve.
        assert!(cache.find("a").is_some());
    }

    #[test]
    fn unknown_key_ids_are_remembered_and_forced_fetches_spaced() {
        let t0 = Instant::now();
        let mut cache = KeyCache::default();
        cache.loaded(set(&["a"]), t0);
        assert!(cache.force(t0));
        assert!(!cache.force(t0 + secs(9)), "a second forced fetch within 10 s");
        cache.remember_unknown("made-up", t0);
        // After the 10 s, another unknown id may fetch, but the one found missing may not.
        assert!(cache.known_unknown("made-up", t0 + secs(11)));
        assert!(!cache.known_unknown("other", t0 + secs(11)));
        assert!(cache.force(t0 + secs(11)));
        assert!(cache.known_unknown("made-up", t0 + secs(299)));
        assert!(!cache.known_unknown("made-up", t0 + secs(300)), "forgotten after 5 minutes");

        // The memory is bounded; expired ids make room.
        for i in 0..UNKNOWN_KEYS_REMEMBERED * 2 {
            cache.remember_unknown(&format!("k{i}"), t0 + secs(400));
        }
        assert_eq!(cache.unknown.len(), UNKNOWN_KEYS_REMEMBERED);
        cache.remember_unknown("later", t0 + secs(400) + UNKNOWN_KEY_MEMORY);
        assert_eq!(cache.unknown.len(), 1);
    }

    #[test]
    fn the_background_refresh_comes_before_the_set_goes_stale() {
        let t0 = Instant::now();
        let mut cache = KeyCache::default();
        assert_eq!(cache.next_refresh(t0, secs(300)), t0, "never fetched: now");
        assert!(cache.stale(t0, secs(300)));
        cache.loaded(set(&["a"]), t0);
        assert_eq!(cache.next_refresh(t0, secs(300)), t0 + secs(295));
        assert_eq!(cache.next_refresh(t0, secs(1)), t0 + Duration::from_millis(900));
        assert!(!cache.stale(t0 + secs(299), secs(300)));
        assert!(cache.stale(t0 + secs(300), secs(300)));
    }
}
