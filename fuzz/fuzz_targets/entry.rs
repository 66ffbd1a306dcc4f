//! A log entry from anyone (an auditor reads every entry of a log it does not trust), of
//! either format (1, before the public log identified no one, and 2): decoding never panics,
//! and a decoded entry is canonical (it encodes back to the same bytes).
#![no_main]

use clover_event::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Entry::decode(data) {
        Ok(Entry::V1(event)) => assert_eq!(event.encode(), data),
        Ok(Entry::V2(event)) => assert_eq!(event.encode(), data),
        Err(_) => {}
    }
});
