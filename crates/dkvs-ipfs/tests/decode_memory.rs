//! A hostile bitswap message is refused for its entries before it is decoded: decoding
//! allocates tens of bytes for an empty entry that is two bytes on the wire.

use std::alloc::System;

use cap::Cap;
use dkvs_ipfs::bitswap::{MAX_ENTRIES, MAX_MESSAGE, Message, WireError};

/// The system allocator, counting the bytes asked of it.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

#[test]
fn a_message_of_millions_of_empty_entries_is_refused_without_decoding_them() {
    // Field 3 (a block), empty, over and over; then field 4 (a presence) the same way; then
    // wantlist entries, each an empty field 1 inside a field-1 wantlist.
    let wantlist = [0x0a, 0x00].repeat(1 << 20);
    let mut nested = vec![0x0a];
    prost::encode_length_delimiter(wantlist.len(), &mut nested).expect("room");
    nested.extend_from_slice(&wantlist);
    for (bytes, what) in [
        ([0x1a, 0x00].repeat(MAX_MESSAGE / 2), "blocks"),
        ([0x22, 0x00].repeat(MAX_MESSAGE / 2), "presences"),
        (nested, "wantlist entries"),
    ] {
        assert!(bytes.len() <= MAX_MESSAGE);
        let before = ALLOCATOR.total_allocated();
        let refused = Message::decode(&bytes);
        let allocated = ALLOCATOR.total_allocated() - before;
        match refused {
            Err(WireError::TooMany { what: said, count }) => {
                assert_eq!(said, what);
                assert!(count > MAX_ENTRIES, "{count}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(allocated < 64 << 10, "{what}: {allocated} bytes allocated to refuse it");
    }
    // The same behind an empty group (which decoding would skip): refused too, undecoded.
    let mut grouped = vec![0x7b, 0x7c];
    grouped.extend_from_slice(&[0x1a, 0x00].repeat(MAX_MESSAGE / 2 - 1));
    let before = ALLOCATOR.total_allocated();
    let refused = Message::decode(&grouped);
    let allocated = ALLOCATOR.total_allocated() - before;
    assert!(matches!(refused, Err(WireError::Malformed(_))), "{refused:?}");
    assert!(allocated < 64 << 10, "{allocated} bytes allocated to refuse it");
}
