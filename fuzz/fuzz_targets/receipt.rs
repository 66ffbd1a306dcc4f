//! A receipt from the boundary, as a custodian reads it (the JSON body of
//! `POST /v1/data-keys/*`: a log index, the entry's bytes in base64, the subject's keyed hash,
//! and the opening of the entry's annex to a record version): reading it never panics, and an
//! entry that is allowed to unlock a key is for the subject the receipt names, at its index,
//! with the entry's leaf hash and a well-formed subject tag, and for the record the opening
//! names (which opens the entry's commitment).
//!
//! The signed log's proof is not fuzzed here (the `checkpoint`, `note` and `tile` targets read
//! what it is made of); this reads what the custodian reads once the entry is proved in the log.
#![no_main]

use clover_custodian::verify::{WireReceipt, access};
use clover_event::is_subject_hash;
use clover_tlog::hash::leaf_hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(receipt) = serde_json::from_slice::<WireReceipt>(data) else { return };
    let Some(entry) = receipt.entry_bytes() else { return };
    if let Ok((allowed, tag)) = access(receipt.index, &entry, &receipt.subject_hash, receipt.opening.as_ref()) {
        assert_eq!(allowed.log_index(), receipt.index);
        assert_eq!(allowed.subject_hash(), receipt.subject_hash);
        assert!(is_subject_hash(allowed.subject_hash()));
        assert!(tag.is_well_formed());
        assert_eq!(allowed.entry_hash(), hex::encode(leaf_hash(&entry).0));
        if let Some(record) = allowed.record() {
            let opening = receipt.opening.as_ref().expect("a record only through an opening");
            assert_eq!(opening.record.as_deref(), Some(record));
            let event = clover_event::Event::decode(&entry).expect("an allowed entry decodes");
            assert!(opening.opens(event.annex.as_deref().expect("an opened entry has an annex")));
        }
    }
});
