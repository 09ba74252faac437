//! Bytes from a peer on the record protocol: a lane's framing and protobuf decoding, and a
//! replication round's messages (negentropy), must never panic, and whatever they accept must
//! stay within its bounds.

#![no_main]

use dkvs_account::{KeyType, Keypair};
use dkvs_net::codec::{MAX_FRAME_LEN, pb};
use dkvs_net::lane::decode_frame;
use dkvs_net::reconcile::{Session, answer, set_of};
use dkvs_record::{Compact, Draft, Key};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// A replica's set of a few records, as a node keeps them and answers rounds from them.
static RECORDS: LazyLock<Vec<Compact>> = LazyLock::new(|| {
    let owner = Keypair::from_secret_bytes(KeyType::Ed25519, &[7; 32]).expect("a fixed key");
    (0..40)
        .map(|i| {
            let key = Key::scoped(&owner.account_id(), &format!("k{i}")).expect("key");
            let mut draft = Draft::new(key, vec![i as u8; 8], 1 + i as u64 % 3, 60_000);
            draft.issued_at_ms = 1_800_000_000_000;
            draft.expires_at_ms = draft.issued_at_ms + 60_000;
            Compact::from(&draft.sign(&owner).expect("valid"))
        })
        .collect()
});

fuzz_target!(|bytes: &[u8]| {
    let Some((&selector, rest)) = bytes.split_first() else { return };
    match selector % 4 {
        // Requests or responses as they come off a lane, in chunks as the stream gives them:
        // frames (id, length, protobuf) until the bytes run out or are refused.
        0 | 1 => {
            let (mut src, mut start) = (Vec::new(), 0);
            for chunk in rest.chunks(usize::from(selector / 4).max(1)) {
                src.extend_from_slice(chunk);
                loop {
                    match decode_frame(&src[start..]) {
                        Ok(Some((_, body))) => {
                            assert!(body.len() <= MAX_FRAME_LEN, "a {}-byte frame", body.len());
                            let frame = &src[start + body.start..start + body.end];
                            let _ = <pb::Request as prost::Message>::decode(frame);
                            let _ = <pb::Response as prost::Message>::decode(frame);
                            start += body.end;
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                // What waits for the rest of a frame is at most one frame and its header.
                assert!(
                    src.len() - start <= MAX_FRAME_LEN + 20,
                    "{} bytes held",
                    src.len() - start
                );
            }
        }
        // A peer's round message, answered from this node's set.
        2 => {
            let set = set_of(RECORDS.iter());
            let _ = answer(&set, rest);
            if let Ok(request) = <pb::Request as prost::Message>::decode(rest)
                && let Some(pb::request::Kind::Reconcile(round)) = request.kind
            {
                let _ = answer(&set, &round.message);
            }
        }
        // A peer's answer to this node's round: the session must not panic, and what it finds
        // missing is among its own records.
        _ => {
            let Ok((mut session, _)) = Session::start(RECORDS.iter().take(20)) else { return };
            if let Ok(None) = session.step(rest) {
                for key in session.missing() {
                    assert!(RECORDS.iter().take(20).any(|r| r.key() == key), "{key} is not ours");
                }
            }
        }
    }
});
