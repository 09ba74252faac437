//! Bytes from a peer: `Record::decode` and `Record::validate` must never panic, and a decoded
//! record must survive re-encoding unchanged.

#![no_main]

use dkvs_record::{Limits, Record};
use libfuzzer_sys::fuzz_target;

/// A fixed clock (2027-01-15), so that a crash reproduces.
const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|bytes: &[u8]| {
    let Ok(record) = Record::decode(bytes) else {
        return;
    };
    // Any verdict is fine; a panic is not.
    let verdict = record.validate(NOW_MS, &Limits::default());

    // The encoding is canonical for a decoded record: re-encoding and decoding gives the same
    // record (the input bytes themselves may differ: unknown fields, field order, duplicates).
    let encoded = record.encode();
    let again = match Record::decode(&encoded) {
        Ok(again) => again,
        Err(error) => panic!("re-encoded record does not decode: {error}"),
    };
    assert_eq!(again, record, "re-encoding changed the record");
    assert_eq!(again.encode(), encoded, "encoding is not deterministic");
    assert_eq!(again.validate(NOW_MS, &Limits::default()), verdict, "verdict changed");
});
