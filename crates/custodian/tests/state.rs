//! The custodian's state file (the last checkpoint of the boundary's log it verified): only a
//! missing file on first start means no state. A file that cannot be read or is damaged stops the
//! custodian with an error that names it, and the file is left as it was; trusting the log from
//! scratch would let a fork through.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::Path;

use clover_audit::state::{State, StateError, Verified, read_state, write_state};
use clover_custodian::LogVerifier;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::{SigningKey, TYPE_ED25519, VerifierKey};

const ORIGIN: &str = "clover.test/eu";

fn vkey() -> VerifierKey {
    SigningKey::generate(ORIGIN, TYPE_ED25519).unwrap().verifier()
}

/// What the custodian does at start with its state file.
fn start(state: &Path) -> Result<LogVerifier, StateError> {
    LogVerifier::new("http://127.0.0.1:9", vkey()).with_state(state.to_owned())
}

#[test]
fn a_missing_state_file_is_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-state");
    start(&path).unwrap();
    assert!(!path.exists(), "nothing is written before a checkpoint is verified");
}

#[test]
fn a_damaged_state_file_stops_the_custodian_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-state");
    let mut state = State::default();
    state.insert(ORIGIN.into(), Verified { size: 12, root: leaf_hash(b"root"), checkpoint: None });
    write_state(&path, &state).unwrap();
    let whole = std::fs::read(&path).unwrap();
    for damaged in [whole[..whole.len() / 2].to_vec(), b"12\n".to_vec(), Vec::new(), b"\0\0\0\0".to_vec()] {
        std::fs::write(&path, &damaged).unwrap();
        let error = start(&path).unwrap_err();
        assert!(matches!(&error, StateError::Damaged { path: p, .. } if *p == path), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("damaged"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "the file was changed");
    }
}

#[test]
fn an_unreadable_state_file_stops_the_custodian() {
    let dir = tempfile::tempdir().unwrap();
    // A directory in place of the file: unreadable as a file, even for root.
    let path = dir.path().join("log-state");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("kept"), b"x").unwrap();
    let error = start(&path).unwrap_err();
    assert!(matches!(&error, StateError::Read { path: p, .. } if *p == path), "{error:?}");
    assert!(error.to_string().contains("cannot read the state file"), "{error}");
    assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"x");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join("locked-state");
        std::fs::write(&path, format!("12 {}\n", leaf_hash(b"root").to_base64())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&path).is_ok() {
            eprintln!("running as root: mode 000 does not stop reads; the directory case above stands in");
            return;
        }
        let error = start(&path).unwrap_err();
        assert!(
            matches!(&error, StateError::Read { cause, .. } if cause.kind() == std::io::ErrorKind::PermissionDenied),
            "{error:?}"
        );
    }
}

#[test]
fn a_state_file_of_another_log_stops_the_custodian() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-state");
    let mut state = State::default();
    state.insert("clover.test/us".into(), Verified { size: 3, root: leaf_hash(b"us"), checkpoint: None });
    write_state(&path, &state).unwrap();
    let error = start(&path).unwrap_err();
    assert!(matches!(error, StateError::OtherLogs { .. }), "{error:?}");
}

#[test]
fn an_earlier_custodians_state_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log-state");
    let root = leaf_hash(b"root");
    std::fs::write(&path, format!("12 {}\n", root.to_base64())).unwrap();
    start(&path).unwrap();
    let state = read_state(&path).unwrap().unwrap();
    assert_eq!(state.get(ORIGIN), Some(&Verified { size: 12, root, checkpoint: None }));
}
