//! Production identity: tokens from an identity provider, verified against its published keys;
//! `X-Forwarded-For` believed only from trusted proxies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clover_gateway::config::ProviderConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, problem};

const ISSUER: &str = "https://idp.example.test";

/// An identity provider's signing key.
struct IdpKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl IdpKey {
    fn new(kid: &str) -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        Self { kid: kid.into(), pkcs8: doc.as_ref().to_vec(), public: pair.public_key().as_ref().to_vec() }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&self.public), "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    fn token(&self, app: &TestApp, audience: &str) -> String {
        let mut claims = app.claims("eu", "dublin-1", 600);
        claims.iss = ISSUER.into();
        claims.aud = audience.into();
        self.sign(self.header(), &serde_json::to_value(claims).unwrap())
    }

    /// The usual claims of this provider's tokens (an EU employee at dublin-1, for ten
    /// minutes), as JSON to change at will.
    fn claims(&self, app: &TestApp) -> Value {
        let mut claims = serde_json::to_value(app.claims("eu", "dublin-1", 600)).unwrap();
        claims["iss"] = ISSUER.into();
        claims
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header
    }

    fn sign(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

/// A provider's configuration, as `[[identity.providers]]` would give it (`extra` adds keys).
fn provider(jwks: &str, refresh_seconds: u64, extra: Value) -> ProviderConfig {
    let mut config = json!({"issuer": ISSUER, "audience": "clover", "jwks": jwks, "refresh_seconds": refresh_seconds});
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(config).unwrap()
}

/// A boundary whose only identity provider publishes `keys` in a file.
async fn app_with_key_file(keys: &[&IdpKey], extra: Value) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(keys)).unwrap();
    let app = TestApp::start_with(|config| {
        config.identity.dev_issuer = false;
        config.identity.providers = vec![provider(file.to_str().unwrap(), 300, extra)];
    })
    .await;
    (app, dir)
}

fn jwks(keys: &[&IdpKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Sends a request with `token`; answers its status, and the problem's detail if refused.
async fn attempt(app: &TestApp, token: &str) -> (u16, String) {
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-1"))
        .bearer_auth(token)
        .json(&json!({"home_region": "eu"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 401 {
        let body = problem(response, 401, "unauthenticated").await;
        (status, body["detail"].as_str().unwrap().to_owned())
    } else {
        (status, String::new())
    }
}

fn accepted(status: u16) -> bool {
    [200, 201].contains(&status)
}

async fn status(app: &TestApp, token: &str) -> u16 {
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-1"))
        .bearer_auth(token)
        .json(&json!({"home_region": "eu"}))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn tokens_from_a_provider_verify_against_its_key_file() {
    let key = IdpKey::new("k1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&key])).unwrap();
    let app = TestApp::start_with(|config| {
        config.identity.dev_issuer = false;
        config.identity.providers = vec![provider(file.to_str().unwrap(), 300, json!({}))];
    })
    .await;

    assert!([200, 201].contains(&status(&app, &key.token(&app, "clover")).await));

    let cases = [
        (key.token(&app, "elsewhere"), "audience"),
        (IdpKey::new("k1").token(&app, "clover"), "signature"),
        (IdpKey::new("k9").token(&app, "clover"), "unknown key id"),
        // The development issuer is switched off here.
        (app.token(), "unexpected issuer"),
    ];
    for (token, expected) in cases {
        let response = app
            .client(DUBLIN)
            .put(app.url("/v1/subjects/u-2"))
            .bearer_auth(token)
            .json(&json!({"home_region": "eu"}))
            .send()
            .await
            .unwrap();
        let body = problem(response, 401, "unauthenticated").await;
        assert!(body["detail"].as_str().unwrap().contains(expected), "{expected}: {body}");
    }
    // A token without a key id, and a token signed with a shared secret, are refused.
    let mut claims = app.claims("eu", "dublin-1", 600);
    claims.iss = ISSUER.into();
    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_der(&key.pkcs8)).unwrap();
    let hmac =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).unwrap();
    for token in [no_kid, hmac] {
        assert_eq!(status(&app, &token).await, 401);
    }
}

#[tokio::test]
async fn a_provider_key_rotation_is_followed_from_its_url() {
    let (old, new) = (IdpKey::new("old"), IdpKey::new("new"));
    let published = Arc::new(Mutex::new(jwks(&[&old])));
    let served = published.clone();
    let idp = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = served.lock().unwrap().clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, idp).await.unwrap() });

    let app = TestApp::start_with(|config| {
        config.identity.providers = vec![provider(&url, 1, json!({}))];
    })
    .await;
    // One token of the old key, verified (and so kept in the boundary's cache of verified tokens).
    let old_token = old.token(&app, "clover");
    assert!([200, 201].contains(&status(&app, &old_token).await));
    // The development issuer still works beside the provider.
    assert!([200, 201].contains(&status(&app, &app.token()).await));

    // The provider publishes a new key: a token naming it makes the boundary fetch the set again.
    *published.lock().unwrap() = jwks(&[&old, &new]);
    assert!([200, 201].contains(&status(&app, &new.token(&app, "clover")).await));

    // The old key is withdrawn: once the cached set is stale, its tokens stop working.
    *published.lock().unwrap() = jwks(&[&new]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(status(&app, &old.token(&app, "clover")).await, 401);
    // The very token verified before is refused too: the cache does not outlive its key.
    assert_eq!(status(&app, &old_token).await, 401);
    assert!([200, 201].contains(&status(&app, &new.token(&app, "clover")).await));
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let app = TestApp::start_with(|config| config.trusted_proxies = vec!["127.0.0.9/32".parse().unwrap()]).await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    let read = |from: &'static str, forwarded: &'static str| {
        let (client, url, token) = (app.client(from), app.url(&format!("/v1/records/{record}")), app.token());
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .header("X-Forwarded-For", forwarded)
                .header("X-Clover-Purpose", "support")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Through the trusted proxy: the forwarded client address decides.
    assert_eq!(read("127.0.0.9", "127.0.0.2").await, 200, "dublin-2 via the proxy");
    assert_eq!(read("127.0.0.9", "127.0.2.1").await, 403, "singapore via the proxy");
    assert_eq!(read("127.0.0.9", "127.0.2.1, 127.0.0.9").await, 403, "the proxy's own hop is skipped");
    assert_eq!(read("127.0.0.9", "127.0.0.1, 127.0.2.1").await, 403, "the rightmost untrusted hop decides");
    assert_eq!(read("127.0.0.9", "not-an-address").await, 403, "malformed: the proxy's own (unknown) address");
    // From anyone else, the header is ignored.
    assert_eq!(read(SINGAPORE, "127.0.0.1").await, 403);
    assert_eq!(read(DUBLIN, "127.0.2.1").await, 200);
}

/// A change to a token's claims.
type ClaimsChange<'a> = dyn Fn(&mut Value) + 'a;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn tokens_not_yet_valid_with_unknown_critical_headers_or_too_long_lived_are_refused() {
    let key = IdpKey::new("k1");
    let (app, _dir) = app_with_key_file(&[&key], json!({})).await;
    let with = |change: &ClaimsChange<'_>| {
        let mut claims = key.claims(&app);
        change(&mut claims);
        key.sign(key.header(), &claims)
    };

    // `nbf` within the clock skew allowed for `exp` (30 s by default) is accepted; later is not.
    assert!(accepted(attempt(&app, &with(&|c| c["nbf"] = (now() + 10).into())).await.0));
    let (status, detail) = attempt(&app, &with(&|c| c["nbf"] = (now() + 600).into())).await;
    assert_eq!(status, 401);
    assert!(detail.contains("not valid yet") && detail.contains("nbf"), "{detail}");

    // A header that marks an extension as critical: this verifier understands none.
    let mut header = key.header();
    header.crit = Some(vec!["https://example.test/ext".into()]);
    header.extras.insert("https://example.test/ext", true);
    let (status, detail) = attempt(&app, &key.sign(header, &key.claims(&app))).await;
    assert_eq!(status, 401);
    assert!(detail.contains("crit") && detail.contains("https://example.test/ext"), "{detail}");

    // At most 24 hours from issue (from now, when the token says nothing of its issue).
    let day = 24 * 3600;
    assert!(accepted(attempt(&app, &with(&|c| c["exp"] = (now() + day - 60).into())).await.0));
    let too_long: [(&str, &ClaimsChange<'_>); 4] = [
        ("exp in 9999", &|c| c["exp"] = 253_402_300_799_i64.into()),
        ("25 hours", &|c| c["exp"] = (now() + day + 3600).into()),
        ("no iat, 25 hours", &|c| {
            c.as_object_mut().unwrap().remove("iat");
            c["exp"] = (now() + day + 3600).into();
        }),
        ("iat in the future", &|c| {
            c["iat"] = (253_402_300_799_i64 - 3600).into();
            c["exp"] = 253_402_300_799_i64.into();
        }),
    ];
    for (case, change) in too_long {
        let (status, detail) = attempt(&app, &with(change)).await;
        assert_eq!(status, 401, "{case}");
        assert!(detail.contains("max_token_lifetime_seconds") && detail.contains("86400"), "{case}: {detail}");
    }
}

#[tokio::test]
async fn an_audience_array_is_accepted_when_it_names_this_boundary() {
    let key = IdpKey::new("k1");
    let (app, _dir) = app_with_key_file(&[&key], json!({})).await;
    let with_aud = |aud: Value| {
        let mut claims = key.claims(&app);
        claims["aud"] = aud;
        key.sign(key.header(), &claims)
    };
    assert!(accepted(attempt(&app, &with_aud(json!(["https://other.test", "clover"]))).await.0));
    assert!(accepted(attempt(&app, &with_aud(json!(["clover"]))).await.0));
    for aud in [json!(["https://other.test"]), json!([]), json!("https://other.test")] {
        let (status, detail) = attempt(&app, &with_aud(aud.clone())).await;
        assert_eq!(status, 401, "{aud}");
        assert!(detail.contains("audience"), "{aud}: {detail}");
    }
}

#[tokio::test]
async fn a_token_naming_a_site_that_is_not_configured_is_refused() {
    let app = TestApp::start().await;
    for site in ["mars-1", "virginia-2"] {
        let token = app.mint(&app.claims("eu", site, 600));
        let (status, detail) = attempt(&app, &token).await;
        assert_eq!(status, 401, "{site}");
        assert!(detail.contains(&format!("{site:?}")) && detail.contains("no site of this boundary"), "{detail}");
    }
    assert!(accepted(attempt(&app, &app.mint(&app.claims("eu", "hamar-1", 600))).await.0));
    // The same for an identity provider's tokens.
    let key = IdpKey::new("k1");
    let (app, _dir) = app_with_key_file(&[&key], json!({})).await;
    let mut claims = key.claims(&app);
    claims["site"] = "mars-1".into();
    let (status, detail) = attempt(&app, &key.sign(key.header(), &claims)).await;
    assert_eq!(status, 401);
    assert!(detail.contains("\"mars-1\""), "{detail}");
}

#[tokio::test]
async fn claim_names_for_region_and_site_are_set_per_provider() {
    let key = IdpKey::new("k1");
    let (app, _dir) =
        app_with_key_file(&[&key], json!({"region_claim": "custom:region", "site_claim": "https://corp.test/site"}))
            .await;
    let mut claims = key.claims(&app);
    let object = claims.as_object_mut().unwrap();
    object.remove("region");
    object.remove("site");
    object.insert("custom:region".into(), "eu".into());
    object.insert("https://corp.test/site".into(), "dublin-1".into());
    assert!(accepted(attempt(&app, &key.sign(key.header(), &claims)).await.0));

    // The names the provider does not use are not read: a token with only those is refused.
    let (status, detail) = attempt(&app, &key.token(&app, "clover")).await;
    assert_eq!(status, 401);
    assert!(detail.contains("custom:region"), "{detail}");
    // And the configured site claim is checked against the sites like any other.
    claims["https://corp.test/site"] = "mars-1".into();
    let (status, detail) = attempt(&app, &key.sign(key.header(), &claims)).await;
    assert_eq!(status, 401);
    assert!(detail.contains("mars-1"), "{detail}");
}

/// An identity provider's JWKS endpoint on 127.0.0.1 that counts its fetches, and can be made
/// slow or failing.
struct JwksServer {
    url: String,
    state: Arc<Mutex<Published>>,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
}

struct Published {
    body: String,
    delay: Duration,
    failing: bool,
    fetched_at: Vec<Instant>,
}

impl JwksServer {
    async fn start(keys: &[&IdpKey]) -> Self {
        let state = Arc::new(Mutex::new(Published {
            body: jwks(keys),
            delay: Duration::ZERO,
            failing: false,
            fetched_at: vec![],
        }));
        let (hits, in_flight) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (served, counted, flying) = (state.clone(), hits.clone(), in_flight.clone());
        let idp = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, counted, flying) = (served.clone(), counted.clone(), flying.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    flying.fetch_add(1, Ordering::SeqCst);
                    let (body, delay, failing) = {
                        let mut state = served.lock().unwrap();
                        state.fetched_at.push(Instant::now());
                        (state.body.clone(), state.delay, state.failing)
                    };
                    tokio::time::sleep(delay).await;
                    flying.fetch_sub(1, Ordering::SeqCst);
                    let status = if failing { 503 } else { 200 };
                    (axum::http::StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, idp).await.unwrap() });
        Self { url, state, hits, in_flight }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, change: impl FnOnce(&mut Published)) {
        change(&mut self.state.lock().unwrap());
    }

    async fn app(&self, refresh_seconds: u64) -> TestApp {
        TestApp::start_with(|config| {
            config.identity.dev_issuer = false;
            config.identity.providers = vec![provider(&self.url, refresh_seconds, json!({}))];
        })
        .await
    }
}

#[tokio::test]
async fn concurrent_tokens_naming_an_unknown_key_fetch_the_key_set_once() {
    let key = IdpKey::new("k1");
    let idp = JwksServer::start(&[&key]).await;
    let app = idp.app(1).await;
    assert!(accepted(status(&app, &key.token(&app, "clover")).await));
    // Let the cached set go stale.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let made_up = IdpKey::new("made-up");
    let before = idp.hits();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let known = i % 5 == 0;
            let token = if known { key.token(&app, "clover") } else { made_up.token(&app, "clover") };
            (known, spawn_status(&app, token))
        })
        .collect();
    for (known, request) in requests {
        let status = request.await.unwrap();
        assert_eq!(accepted(status), known, "{status}");
    }
    let fetches = idp.hits() - before;
    assert!(fetches <= 2, "50 concurrent requests caused {fetches} fetches");
}

#[tokio::test]
async fn a_slow_provider_does_not_hold_up_tokens_with_a_known_key() {
    let key = IdpKey::new("k1");
    let idp = JwksServer::start(&[&key]).await;
    let app = idp.app(1).await;
    assert!(accepted(status(&app, &key.token(&app, "clover")).await));
    idp.set(|p| p.delay = Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A token naming a key the boundary has not seen, while the provider takes its time.
    let unknown = IdpKey::new("k2").token(&app, "clover");
    let waiting = spawn_status(&app, unknown);
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no fetch started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile tokens with a known key are answered from the set in hand.
    let started = Instant::now();
    let token = key.token(&app, "clover");
    let requests: Vec<_> = (0..10).map(|_| spawn_status(&app, token.clone())).collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| accepted(*s)), "{statuses:?}");
    assert!(took < Duration::from_secs(2), "known keys waited {took:?} for a provider that takes 3 s");
    assert_eq!(waiting.await.unwrap(), 401);
}

#[tokio::test]
async fn after_a_failed_fetch_the_next_waits_for_the_backoff_and_the_last_good_set_is_kept() {
    let key = IdpKey::new("k1");
    let idp = JwksServer::start(&[&key]).await;
    idp.set(|p| p.failing = true);
    let app = idp.app(1).await;
    assert_eq!(idp.hits(), 1);

    // Requests keep coming; fetches do not follow each of them, but back off: 1 s, then 2 s.
    let token = key.token(&app, "clover");
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        assert_eq!(status(&app, &token).await, 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched_at = idp.state.lock().unwrap().fetched_at.clone();
    assert!(fetched_at.len() <= 3, "{} fetches in 3.5 s", fetched_at.len());
    let gaps: Vec<Duration> = fetched_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, backoff) in gaps.iter().zip([1, 2]) {
        assert!(
            *gap >= Duration::from_secs(backoff),
            "a fetch {gap:?} after a failure, before its {backoff} s backoff"
        );
    }

    // The provider recovers: its keys are taken up at the next attempt.
    idp.set(|p| p.failing = false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !accepted(status(&app, &token).await) {
        assert!(Instant::now() < deadline, "the recovered provider's keys were not taken up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It fails again: the last good set is still served, well past its refresh time.
    idp.set(|p| p.failing = true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(accepted(status(&app, &token).await));
}

/// Sends the request of [`status`] on a task of its own, to run many at once.
fn spawn_status(app: &TestApp, token: String) -> tokio::task::JoinHandle<u16> {
    let (client, url) = (app.client(DUBLIN), app.url("/v1/subjects/u-1"));
    tokio::spawn(async move {
        client.put(url).bearer_auth(token).json(&json!({"home_region": "eu"})).send().await.unwrap().status().as_u16()
    })
}
