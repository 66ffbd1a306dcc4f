//! A log entry from anyone (an auditor reads every entry of a log it does not trust): decoding
//! never panics, and a decoded entry is canonical (it encodes back to the same bytes).
#![no_main]

use clover_event::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        assert_eq!(event.encode(), data);
    }
});
