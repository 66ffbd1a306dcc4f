//! Production identity: tokens from an identity provider, verified against its published keys;
//! `X-Forwarded-For` believed only from trusted proxies.

use std::sync::{Arc, Mutex};

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
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

fn jwks(keys: &[&IdpKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
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
        config.identity.providers = vec![ProviderConfig {
            issuer: ISSUER.into(),
            audience: "clover".into(),
            jwks: file.to_str().unwrap().into(),
            refresh_seconds: 300,
        }];
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
        config.identity.providers = vec![ProviderConfig {
            issuer: ISSUER.into(),
            audience: "clover".into(),
            jwks: url.clone(),
            refresh_seconds: 1,
        }];
    })
    .await;
    assert!([200, 201].contains(&status(&app, &old.token(&app, "clover")).await));
    // The development issuer still works beside the provider.
    assert!([200, 201].contains(&status(&app, &app.token()).await));

    // The provider publishes a new key: a token naming it makes the boundary fetch the set again.
    *published.lock().unwrap() = jwks(&[&old, &new]);
    assert!([200, 201].contains(&status(&app, &new.token(&app, "clover")).await));

    // The old key is withdrawn: once the cached set is stale, its tokens stop working.
    *published.lock().unwrap() = jwks(&[&new]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(status(&app, &old.token(&app, "clover")).await, 401);
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
