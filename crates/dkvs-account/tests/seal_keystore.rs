//! Sealed boxes, derived symmetric keys and the keystore, through the public API only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use dkvs_account::keystore::{KdfParams, KeyInfo, Keystore, KeystoreError};
use dkvs_account::seal::{self, OpenError, SymmetricKey};
use dkvs_account::{KeyType, Keypair};
use proptest::prelude::*;

const TYPES: [KeyType; 2] = [KeyType::Ed25519, KeyType::Secp256k1];
/// Small Argon2id parameters so that the tests stay fast.
const FAST: KdfParams = KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 };

// ---------------------------------------------------------------------------------------------
// Sealed boxes

#[test]
fn seal_round_trip_both_types() {
    for ty in TYPES {
        let bob = Keypair::generate(ty);
        for message in [&b""[..], b"hello bob", &[0xa5; 10_240]] {
            let sealed = seal::seal(bob.public(), message);
            assert_eq!(sealed.len(), message.len() + seal::overhead(ty), "{ty}");
            assert_eq!(bob.open(&sealed).expect("own box opens"), message, "{ty}");
        }
    }
    assert_eq!(seal::overhead(KeyType::Ed25519), 50);
    assert_eq!(seal::overhead(KeyType::Secp256k1), 51);
}

#[test]
fn empty_plaintext_round_trips() {
    for ty in TYPES {
        let bob = Keypair::generate(ty);
        let sealed = seal::seal(bob.public(), b"");
        assert_eq!(sealed.len(), seal::overhead(ty));
        assert_eq!(bob.open(&sealed), Ok(Vec::new()));
    }
}

#[test]
fn wrong_recipient_fails() {
    for ty in TYPES {
        let bob = Keypair::generate(ty);
        let eve = Keypair::generate(ty);
        let sealed = seal::seal(bob.public(), b"for bob only");
        assert_eq!(eve.open(&sealed), Err(OpenError::DecryptionFailed), "{ty}");
    }
}

#[test]
fn other_key_type_is_named() {
    let ed = Keypair::generate(KeyType::Ed25519);
    let secp = Keypair::generate(KeyType::Secp256k1);
    let err = secp.open(&seal::seal(ed.public(), b"m")).expect_err("wrong key type");
    assert_eq!(
        err,
        OpenError::KeyTypeMismatch { sealed_for: KeyType::Ed25519, key: KeyType::Secp256k1 }
    );
    assert_eq!(err.to_string(), "box is sealed for a ed25519 key, but this key is secp256k1");
}

#[test]
fn every_flipped_byte_fails() {
    for ty in TYPES {
        let bob = Keypair::generate(ty);
        let sealed = seal::seal(bob.public(), b"short message");
        for position in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut altered = sealed.clone();
                altered[position] ^= bit;
                assert!(
                    bob.open(&altered).is_err(),
                    "{ty}: flipping bit {bit:#x} of byte {position} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn every_truncation_fails() {
    for ty in TYPES {
        let bob = Keypair::generate(ty);
        let sealed = seal::seal(bob.public(), b"short message");
        for len in 0..sealed.len() {
            let err = bob.open(&sealed[..len]).expect_err("a truncated box does not open");
            if len < seal::overhead(ty) {
                assert_eq!(
                    err,
                    OpenError::TooShort { len, min: seal::overhead(ty) },
                    "{ty}: length {len}"
                );
            } else {
                assert_eq!(err, OpenError::DecryptionFailed, "{ty}: length {len}");
            }
        }
        // Appended bytes are refused as well.
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(bob.open(&longer), Err(OpenError::DecryptionFailed));
    }
}

#[test]
fn error_messages_are_precise() {
    let bob = Keypair::generate(KeyType::Ed25519);
    let message = |bytes: &[u8]| bob.open(bytes).expect_err("malformed").to_string();
    assert_eq!(message(&[1, 1, 0]), "sealed data is 3 bytes, shorter than the minimum of 50");
    assert_eq!(message(&[2, 1, 0]), "unknown sealed box version 2 (known: 1)");
    assert_eq!(
        message(&[1, 9, 0]),
        "unknown key type code 9 in sealed box (known: 1 = ed25519, 2 = secp256k1)"
    );
    let mut sealed = seal::seal(bob.public(), b"m");
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    assert_eq!(message(&sealed), "decryption failed: encrypted for another key, or altered");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_round_trips(message in proptest::collection::vec(any::<u8>(), 0..2048), secp: bool) {
        let ty = if secp { KeyType::Secp256k1 } else { KeyType::Ed25519 };
        let bob = Keypair::generate(ty);
        let sealed = seal::seal(bob.public(), &message);
        prop_assert_eq!(bob.open(&sealed), Ok(message));
    }

    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), secp: bool) {
        let ty = if secp { KeyType::Secp256k1 } else { KeyType::Ed25519 };
        let _ = Keypair::generate(ty).open(&bytes);
    }

    #[test]
    fn symmetric_round_trips(
        message in proptest::collection::vec(any::<u8>(), 0..2048),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let key = Keypair::generate(KeyType::Ed25519).derive_symmetric_key("proptest");
        let sealed = key.encrypt(&message, &aad);
        prop_assert_eq!(sealed.len(), message.len() + SymmetricKey::OVERHEAD);
        prop_assert_eq!(key.decrypt(&sealed, &aad), Ok(message));
    }
}

// ---------------------------------------------------------------------------------------------
// Symmetric keys

#[test]
fn symmetric_key_is_stable_and_separated() {
    for ty in TYPES {
        let me = Keypair::generate(ty);
        let restored = Keypair::from_secret_bytes(ty, me.secret_bytes().as_ref()).expect("valid");
        let sealed = me.derive_symmetric_key("files").encrypt(b"file", b"name");
        // The same secret and context give the same key, after a restart for example.
        assert_eq!(
            restored.derive_symmetric_key("files").decrypt(&sealed, b"name").expect("same key"),
            b"file"
        );
        // Another context, another account, or other associated data: no.
        let other_context = me.derive_symmetric_key("mail");
        assert_eq!(other_context.decrypt(&sealed, b"name"), Err(OpenError::DecryptionFailed));
        let other_account = Keypair::generate(ty).derive_symmetric_key("files");
        assert_eq!(other_account.decrypt(&sealed, b"name"), Err(OpenError::DecryptionFailed));
        let key = me.derive_symmetric_key("files");
        assert_eq!(key.decrypt(&sealed, b"other"), Err(OpenError::DecryptionFailed));
    }
}

#[test]
fn symmetric_ciphertext_is_tamper_evident() {
    let key = Keypair::generate(KeyType::Secp256k1).derive_symmetric_key("files");
    let sealed = key.encrypt(b"short file", b"");
    assert_ne!(sealed, key.encrypt(b"short file", b""), "nonces are random");
    for position in 0..sealed.len() {
        let mut altered = sealed.clone();
        altered[position] ^= 0x01;
        assert_eq!(key.decrypt(&altered, b""), Err(OpenError::DecryptionFailed), "{position}");
    }
    for len in 0..SymmetricKey::OVERHEAD {
        assert_eq!(
            key.decrypt(&sealed[..len], b""),
            Err(OpenError::TooShort { len, min: SymmetricKey::OVERHEAD })
        );
    }
    assert_eq!(
        key.decrypt(&sealed[..SymmetricKey::OVERHEAD], b""),
        Err(OpenError::DecryptionFailed)
    );
    assert_eq!(format!("{key:?}"), "SymmetricKey(..)");
}

// ---------------------------------------------------------------------------------------------
// Keystore

fn store() -> (tempfile::TempDir, Keystore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store =
        Keystore::open(dir.path().join("keys")).expect("keystore opens").with_kdf_params(FAST);
    (dir, store)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Rewrites one JSON field of a key file.
fn edit(store: &Keystore, name: &str, change: impl FnOnce(&mut serde_json::Value)) {
    let path = store.path(name).expect("valid name");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    change(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).expect("encode")).expect("write");
}

fn corrupt_reason(result: Result<Keypair, KeystoreError>) -> String {
    match result {
        Err(KeystoreError::Corrupt { reason, .. }) => reason,
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn create_load_round_trip_both_types() {
    let (_dir, store) = store();
    for ty in TYPES {
        let name = format!("acct-{ty}");
        let created = store.create(&name, ty, "passphrase").expect("create");
        assert_eq!(created.key_type(), ty);
        let loaded = store.load(&name, "passphrase").expect("load");
        assert_eq!(loaded.public(), created.public());
        assert_eq!(*loaded.secret_bytes(), *created.secret_bytes());
    }
}

#[test]
fn import_then_load_and_refuse_existing_names() {
    let (_dir, store) = store();
    let pair = Keypair::generate(KeyType::Secp256k1);
    store.import("wallet", &pair, "pw").expect("import");
    assert_eq!(store.load("wallet", "pw").expect("load").account_id(), pair.account_id());
    assert!(matches!(
        store.import("wallet", &Keypair::generate(KeyType::Ed25519), "pw"),
        Err(KeystoreError::AlreadyExists(name)) if name == "wallet"
    ));
    assert!(matches!(
        store.create("wallet", KeyType::Ed25519, "pw"),
        Err(KeystoreError::AlreadyExists(_))
    ));
    // The first key is untouched.
    assert_eq!(store.load("wallet", "pw").expect("load").account_id(), pair.account_id());
}

#[test]
fn keys_created_at_once_under_one_name_never_replace_each_other() {
    // Two commands that save the same name at once (a script, a double click): one key is
    // saved, the others are told the name is taken; none is lost unseen.
    let (_dir, store) = store();
    let pairs: Vec<Keypair> = (0..8).map(|_| Keypair::generate(KeyType::Ed25519)).collect();
    let results: Vec<_> = std::thread::scope(|scope| {
        let saving: Vec<_> =
            pairs.iter().map(|pair| scope.spawn(|| store.import("me", pair, "pw"))).collect();
        saving.into_iter().map(|t| t.join().expect("no panic")).collect()
    });
    let saved: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(saved.len(), 1, "{results:?}");
    for (i, result) in results.iter().enumerate() {
        if i != saved[0] {
            assert!(
                matches!(result, Err(KeystoreError::AlreadyExists(n)) if n == "me"),
                "{result:?}"
            );
        }
    }
    let loaded = store.load("me", "pw").expect("load");
    assert_eq!(loaded.account_id(), pairs[saved[0]].account_id());
}

#[test]
fn a_key_file_asking_for_too_much_work_is_refused_before_it_runs() {
    let (_dir, keys) = store();
    keys.create("me", KeyType::Ed25519, "pw").expect("create");
    // 1 GiB and 64 passes: each within its own limit, minutes of work together.
    edit(&keys, "me", |json| {
        json["kdf"]["m_cost_kib"] = (1024 * 1024).into();
        json["kdf"]["t_cost"] = 64.into();
    });
    match keys.load("me", "pw") {
        Err(e @ KeystoreError::KdfRefused { .. }) => {
            let text = e.to_string();
            assert!(text.contains("refused") && text.contains("over the limit"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // Still listed (one such file does not stop a node from reading its keystore).
    assert_eq!(keys.list().expect("lists").len(), 1);
    // So is one over a single parameter's limit (65 passes), refused at unlock the same way.
    keys.create("other", KeyType::Ed25519, "pw").expect("create");
    edit(&keys, "other", |json| json["kdf"]["t_cost"] = 65.into());
    assert_eq!(keys.list().expect("lists").len(), 2);
    match keys.load("other", "pw") {
        Err(e @ KeystoreError::KdfRefused { .. }) => {
            assert!(e.to_string().contains("exceed the limits"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A new key past the limit is refused before any work (1 GiB and 5 passes: each within
    // its own limit).
    let over = KdfParams { m_cost_kib: 1024 * 1024, t_cost: 5, p_cost: 1 };
    let (_dir, over_store) = store();
    assert!(matches!(
        over_store.with_kdf_params(over).create("x", KeyType::Ed25519, "pw"),
        Err(KeystoreError::InvalidKdfParams(reason)) if reason.contains("work")
    ));
}

#[test]
fn wrong_passphrase_is_an_error() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "right").expect("create");
    let err = store.load("alice", "wrong").expect_err("wrong passphrase");
    assert!(matches!(&err, KeystoreError::WrongPassphrase { name, .. } if name == "alice"));
    assert!(err.to_string().starts_with("wrong passphrase for account \"alice\""), "{err}");
    assert!(matches!(store.load("alice", ""), Err(KeystoreError::WrongPassphrase { .. })));
}

#[test]
fn empty_passphrase_is_allowed() {
    let (_dir, store) = store();
    let pair = store.create("open", KeyType::Ed25519, "").expect("create");
    assert_eq!(store.load("open", "").expect("load").public(), pair.public());
    assert!(matches!(store.load("open", " "), Err(KeystoreError::WrongPassphrase { .. })));
}

#[test]
fn files_and_directory_are_private() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let keys = dir.path().join("nested").join("keys");
    let store = Keystore::open(&keys).expect("keystore opens").with_kdf_params(FAST);
    assert_eq!(store.dir(), keys);
    assert_eq!(mode(&keys), 0o700);
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    let path = store.path("alice").expect("valid name");
    assert_eq!(path, keys.join("alice.key.json"));
    assert_eq!(mode(&path), 0o600);
    // Nothing but the key file is left behind.
    let entries: Vec<_> = std::fs::read_dir(&keys).expect("read dir").collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn file_holds_the_documented_fields_and_no_secret() {
    let (_dir, store) = store();
    let pair = store.create("alice", KeyType::Secp256k1, "pw").expect("create");
    let text = std::fs::read_to_string(store.path("alice").expect("name")).expect("read");
    assert!(!text.contains(&hex::encode(pair.secret_bytes().as_ref())));
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["version"], 1);
    assert_eq!(json["name"], "alice");
    assert_eq!(json["key_type"], "secp256k1");
    assert_eq!(json["account_id"], pair.account_id().to_string());
    assert_eq!(json["kdf"]["algorithm"], "argon2id");
    assert_eq!(json["kdf"]["m_cost_kib"], 256);
    assert_eq!(json["kdf"]["t_cost"], 1);
    assert_eq!(json["kdf"]["p_cost"], 1);
    assert_eq!(json["kdf"]["salt"].as_str().map(str::len), Some(32));
    assert_eq!(json["cipher"], "xchacha20poly1305");
    assert_eq!(json["nonce"].as_str().map(str::len), Some(48));
    assert_eq!(json["ciphertext"].as_str().map(str::len), Some(96));
}

#[test]
fn load_uses_the_stored_kdf_params() {
    let (dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    let other = Keystore::open(dir.path().join("keys"))
        .expect("opens")
        .with_kdf_params(KdfParams { m_cost_kib: 512, t_cost: 2, p_cost: 1 });
    assert!(other.load("alice", "pw").is_ok());
}

#[test]
fn invalid_kdf_params_are_refused_on_create() {
    let (_dir, store) = store();
    let store = store.with_kdf_params(KdfParams { m_cost_kib: 1, t_cost: 1, p_cost: 1 });
    assert!(matches!(
        store.create("alice", KeyType::Ed25519, "pw"),
        Err(KeystoreError::InvalidKdfParams(_))
    ));
    assert!(matches!(store.load("alice", "pw"), Err(KeystoreError::NotFound(_))));
}

#[test]
fn truncated_file_is_corrupt() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    let path = store.path("alice").expect("name");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let reason = corrupt_reason(store.load("alice", "pw"));
    assert!(reason.starts_with("not valid JSON"), "{reason}");
    let err = store.load("alice", "pw").expect_err("corrupt");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(matches!(store.list(), Err(KeystoreError::Corrupt { .. })));
}

#[test]
fn flipped_ciphertext_byte_fails_to_decrypt() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    edit(&store, "alice", |json| {
        let mut bytes = hex::decode(json["ciphertext"].as_str().expect("str")).expect("hex");
        bytes[0] ^= 1;
        json["ciphertext"] = hex::encode(bytes).into();
    });
    // The AEAD cannot tell a wrong passphrase from altered bytes; the message says both.
    let err = store.load("alice", "pw").expect_err("altered");
    assert!(matches!(err, KeystoreError::WrongPassphrase { .. }));
    assert!(err.to_string().contains("was altered"), "{err}");
}

#[test]
fn swapped_account_id_is_caught() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    // Another id of the same type: the id is the AEAD's associated data, so decryption fails.
    let other = Keypair::generate(KeyType::Ed25519).account_id().to_string();
    edit(&store, "alice", |json| json["account_id"] = other.clone().into());
    assert!(matches!(store.load("alice", "pw"), Err(KeystoreError::WrongPassphrase { .. })));
    // An id of another type than the key_type field: refused before any decryption.
    let secp = Keypair::generate(KeyType::Secp256k1).account_id().to_string();
    edit(&store, "alice", |json| json["account_id"] = secp.clone().into());
    let reason = corrupt_reason(store.load("alice", "pw"));
    assert!(reason.contains("key_type is ed25519"), "{reason}");
}

#[test]
fn malformed_fields_are_named() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    type Case = (&'static str, fn(&mut serde_json::Value), &'static str);
    let cases: [Case; 8] = [
        ("version", |j| j["version"] = 2.into(), "format version 2"),
        ("name", |j| j["name"] = "bob".into(), "named \"bob\""),
        ("key_type", |j| j["key_type"] = "rsa".into(), "key_type"),
        ("account_id", |j| j["account_id"] = "nope".into(), "account_id"),
        ("kdf", |j| j["kdf"]["algorithm"] = "scrypt".into(), "kdf \"scrypt\""),
        ("t_cost", |j| j["kdf"]["t_cost"] = 0.into(), "t_cost=0"),
        ("salt", |j| j["kdf"]["salt"] = "zz".into(), "kdf.salt is not hex"),
        ("nonce", |j| j["nonce"] = "00".into(), "nonce is 1 bytes, expected 24"),
    ];
    for (what, change, expected) in cases {
        let backup = std::fs::read(store.path("alice").expect("name")).expect("read");
        edit(&store, "alice", change);
        let reason = corrupt_reason(store.load("alice", "pw"));
        assert!(reason.contains(expected), "{what}: {reason}");
        std::fs::write(store.path("alice").expect("name"), backup).expect("restore");
    }
    assert!(store.load("alice", "pw").is_ok());
}

#[test]
fn list_is_sorted_and_needs_no_passphrase() {
    let (_dir, store) = store();
    assert_eq!(store.list().expect("list"), Vec::<KeyInfo>::new());
    let carol = store.create("carol", KeyType::Ed25519, "c").expect("create");
    let alice = store.create("alice", KeyType::Secp256k1, "a").expect("create");
    let bob = store.create("Bob_2", KeyType::Ed25519, "b").expect("create");
    // Files that are not key files are ignored.
    std::fs::write(store.dir().join("notes.txt"), "hi").expect("write");
    std::fs::write(store.dir().join(".hidden.key.json"), "{").expect("write");
    let list = store.list().expect("list");
    let summary: Vec<_> =
        list.iter().map(|info| (info.name.as_str(), info.key_type, &info.account_id)).collect();
    assert_eq!(
        summary,
        vec![
            ("Bob_2", KeyType::Ed25519, &bob.account_id()),
            ("alice", KeyType::Secp256k1, &alice.account_id()),
            ("carol", KeyType::Ed25519, &carol.account_id()),
        ]
    );
}

#[test]
fn remove_deletes_the_file() {
    let (_dir, store) = store();
    store.create("alice", KeyType::Ed25519, "pw").expect("create");
    store.remove("alice").expect("remove");
    assert!(!store.path("alice").expect("name").exists());
    assert!(matches!(store.remove("alice"), Err(KeystoreError::NotFound(n)) if n == "alice"));
    assert!(matches!(store.load("alice", "pw"), Err(KeystoreError::NotFound(_))));
    // The name is free again.
    store.create("alice", KeyType::Secp256k1, "pw").expect("create again");
}

#[test]
fn invalid_names_are_refused_everywhere() {
    let (_dir, store) = store();
    let too_long = "a".repeat(65);
    for bad in ["", "a b", "../escape", "a/b", ".", "ünïcode", "name.key", too_long.as_str()] {
        let refused = |result: Result<(), KeystoreError>| {
            let err = result.expect_err("invalid name");
            assert!(matches!(&err, KeystoreError::InvalidName(n) if n == bad), "{bad}: {err}");
            assert!(err.to_string().contains("1 to 64 characters of A-Z, a-z, 0-9, _ and -"));
        };
        refused(store.create(bad, KeyType::Ed25519, "pw").map(drop));
        refused(store.import(bad, &Keypair::generate(KeyType::Ed25519), "pw"));
        refused(store.load(bad, "pw").map(drop));
        refused(store.remove(bad));
        refused(store.path(bad).map(drop));
    }
    store.create(&"a".repeat(64), KeyType::Ed25519, "pw").expect("64 characters are fine");
    assert_eq!(std::fs::read_dir(store.dir()).expect("read dir").count(), 1);
}

#[test]
fn errors_never_show_secrets() {
    let (_dir, store) = store();
    let pair = store.create("alice", KeyType::Ed25519, "hunter2").expect("create");
    let secret = hex::encode(pair.secret_bytes().as_ref());
    let err = store.load("alice", "wrong").expect_err("wrong");
    for text in [format!("{err}"), format!("{err:?}"), format!("{store:?}")] {
        assert!(!text.contains(&secret) && !text.contains("hunter2"), "{text}");
    }
}
