//! A checkpoint body (c2sp.org/tlog-checkpoint) from anyone: parsing never panics, and what
//! parses prints back to the same text.
#![no_main]

use clover_tlog::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(checkpoint) = Checkpoint::parse(text) {
        let again = Checkpoint::parse(&checkpoint.to_text()).expect("a printed checkpoint parses");
        assert_eq!(again, checkpoint);
    }
});
