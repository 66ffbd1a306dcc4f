//! Unwraps per second: the keyring against an HSM (SoftHSM2 over PKCS#11), against raw
//! AES-256-GCM over the same bytes, in one run.
//!
//! Run with `cargo bench -p clover-keys --bench unwrap` (needs `softhsm2`: the bench makes a
//! token in a temporary directory, and runs itself again with `SOFTHSM2_CONF` pointing there).
//!
//! - `unwrap/raw_aes_gcm`: aws-lc-rs opening a wrapped 32-byte data key (the baseline).
//! - `unwrap/keyring`: `Kek::decrypt` with the keyring's KEK (the same AES-GCM, plus a lock).
//! - `unwrap/pkcs11`: `Kek::decrypt` in the HSM: `C_DecryptInit` + `C_Decrypt` with
//!   `CKM_AES_GCM` on a non-extractable key, through a pooled session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use clover_keys::pkcs11::{AuthPin, Pkcs11Config, Pkcs11Kek};
use clover_keys::{Kek, Keyring, Passphrase};
use criterion::{Criterion, Throughput};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CONF: &str = "SOFTHSM2_CONF";

/// Makes a SoftHSM2 token in a temporary directory and runs this bench again with it.
fn reexec_with_token() -> ! {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .unwrap();
    let made = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "clover-bench", "--pin", "1234", "--so-pin", "5678"])
        .env(CONF, &conf)
        .output()
        .expect("softhsm2-util not found: apt-get install softhsm2");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env(CONF, &conf)
        .status()
        .unwrap();
    drop(dir);
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    if std::env::var_os(CONF).is_none() {
        reexec_with_token();
    }
    let dir = tempfile::tempdir().unwrap();
    let region: clover_model::Region = "eu".parse().unwrap();
    let keyring =
        Keyring::create_with(&dir.path().join("keyring.json"), region.clone(), &Passphrase::new("pw"), (64, 1, 1))
            .unwrap();
    let hsm = Pkcs11Kek::open(
        &Pkcs11Config { module: PathBuf::from(MODULE), token_label: "clover-bench".into() },
        region,
        AuthPin::new("1234".into()),
    )
    .unwrap();
    let aad = b"clover/custody-key/v1 bench";
    let data_key = [7u8; 32];
    let by_keyring = keyring.encrypt(1, aad, &data_key).unwrap();
    let by_hsm = hsm.encrypt(1, aad, &data_key).unwrap();
    assert_eq!(keyring.decrypt(1, aad, &by_keyring).unwrap().as_slice(), &data_key);
    assert_eq!(hsm.decrypt(1, aad, &by_hsm).unwrap().as_slice(), &data_key);
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).unwrap());
    let nonce = [1u8; 12];
    let mut sealed = data_key.to_vec();
    raw.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed).unwrap();

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("unwrap");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_aes_gcm", |b| {
        b.iter(|| {
            let mut in_out = sealed.clone();
            black_box(
                raw.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut in_out).unwrap().len(),
            )
        });
    });
    group.bench_function("keyring", |b| b.iter(|| black_box(keyring.decrypt(1, aad, &by_keyring).unwrap())));
    group.bench_function("pkcs11", |b| b.iter(|| black_box(hsm.decrypt(1, aad, &by_hsm).unwrap())));
    group.finish();
    c.final_summary();
}
