//! A bearer token from anyone (every request's `Authorization` header): reading the header,
//! the token's JOSE header and its claims never panics, and a token that is accepted names a
//! principal whose claims the rules checked.
//!
//! The first byte picks what the rest is: the `Authorization` header's value as sent (mostly
//! refused at the signature, but the bearer scheme, the base64 and the JOSE header are read
//! first); or a JOSE header and a claims set, one JSON document a line, which the target signs
//! with the development issuer's key so that the verifier reads them through: `crit`, `alg`,
//! `iss`, `aud` (a string or an array), `exp`, `nbf`, `iat`, the lifetime, `sub`, `kind`, the
//! region and site claims, and the roles.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use clover_gateway::config::IdentityConfig;
use clover_gateway::identity::{DevIssuer, TokenVerifier};
use libfuzzer_sys::fuzz_target;

struct Issuer {
    signer: Ed25519KeyPair,
    /// The rules as configured by default (a 24 h lifetime at most).
    strict: TokenVerifier,
    /// Rules that accept any lifetime, so that a committed token stays valid as time passes
    /// and the fuzzer reaches the claims after the time checks.
    lax: TokenVerifier,
}

fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("clover-fuzz-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("issuer.key");
        let _ = std::fs::remove_file(&path);
        let issuer = DevIssuer::create(&path).expect("an issuer key");
        let pkcs8 = std::fs::read(&path).expect("the issuer key reads back");
        let _ = std::fs::remove_dir_all(&dir);
        let strict = issuer.verifier(&IdentityConfig::default());
        let lax = issuer.verifier(&IdentityConfig {
            max_token_lifetime_seconds: u64::MAX,
            leeway_seconds: 60,
            ..IdentityConfig::default()
        });
        Issuer { signer: Ed25519KeyPair::from_pkcs8(&pkcs8).expect("an Ed25519 key"), strict, lax }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let issuer = issuer();
    let verifier = if mode & 2 == 0 { &issuer.lax } else { &issuer.strict };
    if mode & 1 == 0 {
        let _ = verifier.authenticate(Some(text));
        return;
    }
    let (header, claims) = text.split_once('\n').unwrap_or((text, "{}"));
    let signing_input = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let signature = issuer.signer.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", B64URL.encode(signature.as_ref()));
    if let Ok(principal) = verifier.verify(&token) {
        // Accepted: the claims said so. Their types were checked; check the values too.
        let claims: serde_json::Value = serde_json::from_str(claims).expect("accepted claims are JSON");
        assert_eq!(claims["sub"].as_str(), Some(principal.id.as_str()));
        assert_eq!(claims["site"].as_str(), Some(principal.site.as_str()));
        assert_eq!(claims["region"].as_str(), Some(principal.home_region.as_str()));
        let header: serde_json::Value = serde_json::from_str(header).expect("an accepted header is JSON");
        assert!(header.get("crit").is_none_or(serde_json::Value::is_null), "a crit header was accepted");
    }
});
