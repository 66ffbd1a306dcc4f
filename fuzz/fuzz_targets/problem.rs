//! An answer to one of Clover's clients (the boundary's client of a custodian, `clover keys` and
//! `clover custodian`): a status and a body from a server that may be hostile. Reading it never
//! panics; an error's detail is bounded and carries no control character (it is printed to a
//! terminal and written to logs); a success's base64 field decodes or is refused.
#![no_main]

use clover_custodian::client::{MAX_DETAIL_CHARS, answer_field, error_detail, read_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else { return };
    // A few statuses the clients tell apart, and others.
    let status = [200, 201, 400, 403, 404, 409, 422, 429, 500, 503][usize::from(status) % 10];
    if let Some(detail) = error_detail(body) {
        assert!(detail.chars().count() <= MAX_DETAIL_CHARS);
        assert!(!detail.chars().any(char::is_control), "a control character in {detail:?}");
    }
    match read_answer(status, body) {
        Ok(answer) => {
            assert!(status == 200 || status == 201);
            for name in ["key", "data"] {
                let _ = answer_field(&answer, name);
            }
        }
        Err(e) => {
            assert!(status != 200 && status != 201);
            let _ = e.to_string();
        }
    }
});
