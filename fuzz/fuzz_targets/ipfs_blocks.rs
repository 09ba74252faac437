//! Bytes from an IPFS peer: bitswap frames and messages, dag-pb and UnixFS blocks fed to the
//! file reader, and encrypted-file headers must never panic; a block a message carries is
//! always kept under the CID of its bytes; a dag-pb node that decodes encodes back to itself.

#![no_main]

use dkvs_ipfs::bitswap::{Message, read_frame};
use dkvs_ipfs::unixfs::{self, FileReader};
use dkvs_ipfs::{cid_of, crypt};
use dkvs_net::libp2p::futures::executor::block_on;
use dkvs_net::libp2p::futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let mut stream = Cursor::new(data);
        while let Ok(Some(frame)) = read_frame(&mut stream).await {
            check_message(&frame);
        }
    });
    check_message(data);

    if let Ok(node) = unixfs::decode(data) {
        assert_eq!(unixfs::decode(&unixfs::encode(&node)).ok(), Some(node));
    }
    for codec in [0x70, 0x55] {
        let root = cid_of(codec, data);
        let mut reader = FileReader::new(root);
        let _ = reader.upcoming(8);
        if let Ok(Some(bytes)) = reader.feed(&root, data) {
            assert!(bytes.len() <= data.len());
        }
        let _ = reader.upcoming(8);
        let _ = unixfs::links(&root, data);
        let _ = unixfs::kind(&root, data);
        let _ = unixfs::resolve_child(data, "a");
    }
    let _ = crypt::Header::parse(data);
});

fn check_message(bytes: &[u8]) {
    if let Ok(message) = Message::decode(bytes) {
        for (cid, block) in &message.blocks {
            let again = if cid.version() == dkvs_ipfs::cid::Version::V0 {
                dkvs_ipfs::Cid::new_v0(*cid_of(0x70, block).hash()).ok()
            } else {
                Some(cid_of(cid.codec(), block))
            };
            assert_eq!(again.as_ref(), Some(cid), "a block is kept under the CID of its bytes");
        }
    }
}
