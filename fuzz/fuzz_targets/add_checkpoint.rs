//! The body of a witness's add-checkpoint request (c2sp.org/tlog-witness), which a witness reads
//! from anyone who can reach it: parsing never panics.
#![no_main]

use clover_tlog::witness::AddCheckpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(request) = AddCheckpoint::parse(text) {
        assert!(text.ends_with(&request.text));
    }
});
