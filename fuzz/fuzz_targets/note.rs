//! A signed note, a verifier key and a cosignature from anyone (c2sp.org/signed-note,
//! c2sp.org/tlog-cosignature): parsing and verifying never panic, and a parsed note prints back
//! to text that parses to the same note.
#![no_main]

use clover_tlog::note::{Note, VerifierKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (key, note) = text.split_once('\n').unwrap_or((text, text));
    let key = VerifierKey::parse(key).ok();
    if let Ok(parsed) = Note::parse(note) {
        let again = Note::parse(&parsed.to_text()).expect("a printed note parses");
        assert_eq!(again, parsed);
        if let Some(key) = key {
            let _ = parsed.verify(&key);
            let _ = parsed.verify_cosignature(&key);
        }
    }
});
