//! Test vectors for the signing bytes and the wire format: `tests/vectors/record-v1.json`.
//!
//! Each case is checked three ways: its `encoded` bytes decode and validate to its verdict, the
//! record rebuilt from its fields and secret key has its exact signing bytes, signature and
//! encoding, and the generator below still produces the file. With `DKVS_BLESS=1` the generator
//! writes the file instead of checking it (see `docs/record-format.md`).

use std::sync::OnceLock;

use dkvs_account::{KeyError, KeyType, Keypair, PublicKey, VerifyError};
use dkvs_record::{
    DecodeError, Draft, InvalidKey, Key, Limits, MAX_ENCODED_LEN, MAX_VALUE_LEN, RECORD_DOMAIN,
    Record, RecordError, TRANSFER_DOMAIN, Transfer, ValidateError, transfer_signing_bytes,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/record-v1.json");

/// Issue time of most cases (2027-01-15T08:00:00Z), their lifetime, and the time they are checked.
const ISSUED: u64 = 1_800_000_000_000;
const TTL: u64 = 3_600_000;
const NOW: u64 = ISSUED + 60_000;

// ---------------------------------------------------------------------------------------------
// The file's format.

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    about: String,
    record_domain: String,
    transfer_domain: String,
    max_value_len: usize,
    max_encoded_len: usize,
    max_clock_skew_ms: Dec,
    cases: Vec<Case>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    description: String,
    /// `sign`: `encoded` is the signed record's encoding. `edit`: the signed record's encoding
    /// after the edit the description gives. `bytes`: hand-made bytes, no signed record.
    produced_by: Produced,
    owner: Option<Account>,
    record: Option<Fields>,
    /// Signing bytes and signature of the record signed from `record` by `owner`.
    signing_bytes: Option<String>,
    signature: Option<String>,
    encoded: String,
    now_ms: Dec,
    verdict: String,
    detail: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Produced {
    Sign,
    Edit,
    Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Account {
    key_type: String,
    secret_key: String,
    public_key: String,
    account_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    key: String,
    value: String,
    seq: Dec,
    issued_at_ms: Dec,
    expires_at_ms: Dec,
    tombstone: bool,
    transfer: Option<TransferFields>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferFields {
    from: Account,
    to_key_type: String,
    to_public_key: String,
    /// The sequence the giver consented to, which need not be the record's.
    seq: Dec,
    signing_bytes: String,
    signature: String,
}

/// A u64 as a decimal string, as the proto3 JSON mapping writes 64-bit integers, so that
/// readers whose numbers are doubles lose nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Dec(u64);

impl Serialize for Dec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Dec).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The three checks.

fn blessing() -> bool {
    std::env::var("DKVS_BLESS").is_ok_and(|v| v == "1")
}

/// The vectors under test: the file, or with `DKVS_BLESS=1` the generator's output, written to
/// the file first. Either way every test sees the same data.
fn vectors() -> &'static Vectors {
    static VECTORS: OnceLock<Vectors> = OnceLock::new();
    VECTORS.get_or_init(|| {
        if blessing() {
            let vectors = generate();
            let mut text = serde_json::to_string_pretty(&vectors).expect("vectors serialize");
            text.push('\n');
            std::fs::create_dir_all(std::path::Path::new(FILE).parent().expect("has a parent"))
                .expect("create the vectors directory");
            std::fs::write(FILE, text).expect("write the vector file");
            vectors
        } else {
            let text = std::fs::read_to_string(FILE).expect("read the vector file");
            serde_json::from_str(&text).expect("the vector file parses")
        }
    })
}

#[test]
fn file_is_what_the_generator_makes() {
    let file = vectors();
    let generated = generate();
    let hint = "run `DKVS_BLESS=1 cargo test -p dkvs-record --test vectors` and review the diff";
    assert_eq!(file.cases.len(), generated.cases.len(), "number of cases; {hint}");
    for (f, g) in file.cases.iter().zip(&generated.cases) {
        assert_eq!(f, g, "case {}; {hint}", g.name);
    }
    assert_eq!(file, &generated, "{hint}");
}

#[test]
fn every_case_has_its_verdict() {
    let vectors = vectors();
    let limits = Limits::default().with_max_clock_skew_ms(vectors.max_clock_skew_ms.0);
    assert_eq!(limits, Limits::default(), "the file states the default skew bound");
    assert_eq!(vectors.record_domain, RECORD_DOMAIN.as_str());
    assert_eq!(vectors.transfer_domain, TRANSFER_DOMAIN.as_str());
    assert_eq!(vectors.max_value_len, MAX_VALUE_LEN);
    assert_eq!(vectors.max_encoded_len, MAX_ENCODED_LEN);
    let mut names = std::collections::BTreeSet::new();
    for case in &vectors.cases {
        assert!(names.insert(&case.name), "duplicate case name {}", case.name);
        let bytes = unhex(&case.encoded);
        let result = Record::decode_validated(&bytes, case.now_ms.0, &limits);
        let (verdict, detail) = match &result {
            Ok(_) => ("valid".to_owned(), None),
            Err(error) => name_of(error),
        };
        assert_eq!(
            (verdict.as_str(), detail.as_deref()),
            (case.verdict.as_str(), case.detail.as_deref()),
            "case {}: {result:?}",
            case.name
        );
        if let Ok(record) = result
            && case.produced_by == Produced::Sign
        {
            // The encoding of a signed record is canonical: decoding then encoding is exact.
            assert_eq!(hex::encode(record.encode()), case.encoded, "case {}", case.name);
            let signing_bytes = hex::encode(record.signing_bytes());
            assert_eq!(Some(&signing_bytes), case.signing_bytes.as_ref(), "case {}", case.name);
        }
    }
}

#[test]
fn batch_and_single_validation_agree_on_every_case() {
    let limits = Limits::default();
    for case in &vectors().cases {
        let Ok(record) = Record::decode(&unhex(&case.encoded)) else { continue };
        let single = record.validate(case.now_ms.0, &limits);
        // Alone, and among valid records (a batch that fails falls back to single checks).
        let alone =
            dkvs_record::validate_batch(std::slice::from_ref(&record), case.now_ms.0, &limits);
        assert_eq!(alone, vec![single.clone()], "case {}", case.name);
        let mut batch: Vec<Record> = vectors()
            .cases
            .iter()
            .filter(|c| c.verdict == "valid" && c.now_ms.0 == case.now_ms.0)
            .filter_map(|c| Record::decode(&unhex(&c.encoded)).ok())
            .collect();
        batch.push(record);
        let verdicts = dkvs_record::validate_batch(&batch, case.now_ms.0, &limits);
        assert_eq!(verdicts.last(), Some(&single), "case {} in a batch", case.name);
        assert!(verdicts[..verdicts.len() - 1].iter().all(Result::is_ok), "case {}", case.name);
    }
}

#[test]
fn signed_cases_rebuild_byte_for_byte() {
    for case in &vectors().cases {
        let (Some(owner), Some(fields)) = (&case.owner, &case.record) else {
            assert_eq!(case.produced_by, Produced::Bytes, "case {} lacks its record", case.name);
            continue;
        };
        let owner_pair = keypair_of(owner);
        assert_eq!(account_of(&owner_pair), *owner, "case {}: owner keys", case.name);
        if let Some(t) = &fields.transfer {
            let from = keypair_of(&t.from);
            assert_eq!(account_of(&from), t.from, "case {}: giver keys", case.name);
            let key = Key::new(fields.key.as_str()).expect("vector keys are valid");
            let to = public_of(&t.to_key_type, &t.to_public_key);
            let bytes = transfer_signing_bytes(&key, from.public(), &to, t.seq.0);
            assert_eq!(hex::encode(bytes), t.signing_bytes, "case {}: transfer bytes", case.name);
            let signature = Transfer::sign(&from, &key, &to, t.seq.0).signature().0;
            assert_eq!(hex::encode(signature), t.signature, "case {}: transfer sig", case.name);
        }
        let record = sign(&owner_pair, fields);
        let signing_bytes = hex::encode(record.signing_bytes());
        assert_eq!(Some(&signing_bytes), case.signing_bytes.as_ref(), "case {}", case.name);
        let signature = hex::encode(record.signature().as_bytes());
        assert_eq!(Some(&signature), case.signature.as_ref(), "case {}", case.name);
        if case.produced_by == Produced::Sign {
            assert_eq!(hex::encode(record.encode()), case.encoded, "case {}", case.name);
        }
    }
}

/// The verdict's name and, for errors that wrap another, the inner error's name.
fn name_of(error: &RecordError) -> (String, Option<String>) {
    let (name, detail): (&str, Option<String>) = match error {
        RecordError::Decode(e) => match e {
            DecodeError::TooLarge { .. } => ("TooLarge", None),
            DecodeError::Protobuf(_) => ("Protobuf", None),
            DecodeError::ValueTooLarge { .. } => ("ValueTooLarge", None),
            DecodeError::Key(k) => ("Key", Some(invalid_key_name(k).to_owned())),
            DecodeError::PublicKey(k) => (key_error_name(k), None),
            DecodeError::MissingField(field) => ("MissingField", Some((*field).to_owned())),
            DecodeError::RedundantOwner => ("RedundantOwner", None),
            DecodeError::UnknownFlags(_) => ("UnknownFlags", None),
            DecodeError::SignatureLength { .. } => ("SignatureLength", None),
            other => panic!("no vector name for {other:?}"),
        },
        RecordError::Validate(e) => match e {
            ValidateError::ValueTooLarge { .. } => ("ValueTooLarge", None),
            ValidateError::WrongOwner { .. } => ("WrongOwner", None),
            ValidateError::TombstoneWithValue { .. } => ("TombstoneWithValue", None),
            ValidateError::ExpiresBeforeIssued { .. } => ("ExpiresBeforeIssued", None),
            ValidateError::Expired { .. } => ("Expired", None),
            ValidateError::IssuedInFuture { .. } => ("IssuedInFuture", None),
            ValidateError::TransferOnAccountKey(_) => ("TransferOnAccountKey", None),
            ValidateError::TransferToSelf => ("TransferToSelf", None),
            ValidateError::BadTransfer(v) => ("BadTransfer", Some(verify_error_name(v).to_owned())),
            ValidateError::BadSignature(v) => {
                ("BadSignature", Some(verify_error_name(v).to_owned()))
            }
            other => panic!("no vector name for {other:?}"),
        },
        other => panic!("no vector name for {other:?}"),
    };
    (name.to_owned(), detail)
}

fn invalid_key_name(error: &InvalidKey) -> &'static str {
    match error {
        InvalidKey::Length { .. } => "Length",
        InvalidKey::NotUtf8 => "NotUtf8",
        InvalidKey::NoLeadingSlash(_) => "NoLeadingSlash",
        InvalidKey::EmptySegment(_) => "EmptySegment",
        InvalidKey::ControlCharacter { .. } => "ControlCharacter",
        InvalidKey::InvisibleCharacter { .. } => "InvisibleCharacter",
        InvalidKey::NotNfc(_) => "NotNfc",
        InvalidKey::BadAccountId { .. } => "BadAccountId",
        InvalidKey::LooksLikeAccountId { .. } => "LooksLikeAccountId",
        other => panic!("no vector name for {other:?}"),
    }
}

fn key_error_name(error: &KeyError) -> &'static str {
    match error {
        KeyError::UnknownKeyType(_) => "UnknownKeyType",
        KeyError::PublicKeyLength { .. } => "PublicKeyLength",
        KeyError::InvalidPublicKey(_) => "InvalidPublicKey",
        other => panic!("no vector name for {other:?}"),
    }
}

fn verify_error_name(error: &VerifyError) -> &'static str {
    match error {
        VerifyError::Mismatch(_) => "Mismatch",
        VerifyError::HighS => "HighS",
        VerifyError::Malformed(_) => "Malformed",
        other => panic!("no vector name for {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// From the file's fields to records, and back.

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("vector hex is valid")
}

fn key_type_of(name: &str) -> KeyType {
    name.parse().expect("vector key types are known")
}

fn keypair_of(account: &Account) -> Keypair {
    Keypair::from_secret_bytes(key_type_of(&account.key_type), &unhex(&account.secret_key))
        .expect("vector secret keys are valid")
}

fn public_of(key_type: &str, hex: &str) -> PublicKey {
    PublicKey::from_bytes(key_type_of(key_type), &unhex(hex)).expect("vector public keys are valid")
}

fn account_of(pair: &Keypair) -> Account {
    Account {
        key_type: pair.key_type().name().to_owned(),
        secret_key: hex::encode(pair.secret_bytes().as_ref()),
        public_key: hex::encode(pair.public().as_bytes()),
        account_id: pair.account_id().to_string(),
    }
}

/// Signs `fields` as `owner`: the one path from a case's fields to its record.
fn sign(owner: &Keypair, fields: &Fields) -> Record {
    let key = Key::new(fields.key.as_str()).expect("vector keys are valid");
    let transfer = fields.transfer.as_ref().map(|t| {
        let to = public_of(&t.to_key_type, &t.to_public_key);
        Transfer::sign(&keypair_of(&t.from), &key, &to, t.seq.0)
    });
    let draft = Draft {
        key,
        value: unhex(&fields.value),
        seq: fields.seq.0,
        issued_at_ms: fields.issued_at_ms.0,
        expires_at_ms: fields.expires_at_ms.0,
        tombstone: fields.tombstone,
        transfer,
    };
    draft.sign(owner).expect("vector drafts are well-formed")
}

// ---------------------------------------------------------------------------------------------
// A protobuf editor, just enough for record.proto (varint and length-delimited fields), to make
// the bytes `Draft::sign` refuses to make.

#[derive(Clone, Debug, PartialEq)]
enum Wire {
    Varint(u64),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq)]
struct Proto(Vec<(u32, Wire)>);

impl Proto {
    fn parse(bytes: &[u8]) -> Proto {
        let mut fields = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let tag = read_varint(bytes, &mut at);
            let number = u32::try_from(tag >> 3).expect("small field number");
            let wire = match tag & 7 {
                0 => Wire::Varint(read_varint(bytes, &mut at)),
                2 => {
                    let len = usize::try_from(read_varint(bytes, &mut at)).expect("small length");
                    at += len;
                    Wire::Bytes(bytes[at - len..at].to_vec())
                }
                other => panic!("wire type {other} is not used by record.proto"),
            };
            fields.push((number, wire));
        }
        let proto = Proto(fields);
        assert_eq!(proto.encode(), bytes, "the editor reproduces what it parsed");
        proto
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (number, wire) in &self.0 {
            match wire {
                Wire::Varint(v) => {
                    write_varint(&mut out, u64::from(*number) << 3);
                    write_varint(&mut out, *v);
                }
                Wire::Bytes(b) => {
                    write_varint(&mut out, (u64::from(*number) << 3) | 2);
                    write_varint(&mut out, b.len() as u64);
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    /// The payload of the length-delimited field `number`.
    fn bytes(&mut self, number: u32) -> &mut Vec<u8> {
        match self.0.iter_mut().find(|(n, _)| *n == number) {
            Some((_, Wire::Bytes(b))) => b,
            _ => panic!("no length-delimited field {number}"),
        }
    }

    /// Sets field `number`, in field-number order as prost writes it.
    fn set(&mut self, number: u32, wire: Wire) {
        self.remove(number);
        let at = self.0.iter().position(|(n, _)| *n > number).unwrap_or(self.0.len());
        self.0.insert(at, (number, wire));
    }

    fn remove(&mut self, number: u32) {
        self.0.retain(|(n, _)| *n != number);
    }

    /// Edits the embedded message in field `number`.
    fn nested(&mut self, number: u32, edit: impl FnOnce(&mut Proto)) {
        let mut inner = Proto::parse(self.bytes(number));
        edit(&mut inner);
        *self.bytes(number) = inner.encode();
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes")
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Re-encodes `record` after `edit`.
fn edit(record: &Record, edit: impl FnOnce(&mut Proto)) -> Vec<u8> {
    let mut proto = Proto::parse(&record.encode());
    edit(&mut proto);
    proto.encode()
}

/// The wire form of a public key (`PublicKey` message).
fn pb_public_key(key: &PublicKey) -> Vec<u8> {
    let fields = vec![
        (1, Wire::Varint(u64::from(key.key_type().code()))),
        (2, Wire::Bytes(key.as_bytes().to_vec())),
    ];
    Proto(fields).encode()
}

/// The wire form of a transfer (`Transfer` message).
fn pb_transfer(transfer: &Transfer) -> Vec<u8> {
    let fields = vec![
        (1, Wire::Bytes(pb_public_key(transfer.from()))),
        (2, Wire::Bytes(transfer.signature().0.to_vec())),
    ];
    Proto(fields).encode()
}

/// Appends an unknown length-delimited field 15 so that the encoding is exactly `target` bytes.
fn pad_to(bytes: &[u8], target: usize) -> Vec<u8> {
    let mut proto = Proto::parse(bytes);
    proto.0.push((15, Wire::Bytes(Vec::new())));
    let overhead = proto.encode().len();
    for len in (0..=target - overhead).rev() {
        *proto.bytes(15) = vec![0; len];
        if proto.encode().len() == target {
            return proto.encode();
        }
    }
    panic!("cannot pad {} bytes to {target}", bytes.len())
}

// ---------------------------------------------------------------------------------------------
// Signature arithmetic for the malleability cases, on 256-bit numbers.

/// secp256k1's group order n, big-endian.
const SECP256K1_N: [u8; 32] =
    hex_literal("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
/// Ed25519's group order L, little-endian.
const ED25519_L: [u8; 32] = {
    let mut be = hex_literal("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed");
    let mut i = 0;
    while i < 16 {
        let t = be[i];
        be[i] = be[31 - i];
        be[31 - i] = t;
        i += 1;
    }
    be
};

const fn hex_literal(text: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("lowercase hex only"),
        }
    }
    let text = text.as_bytes();
    assert!(text.len() == 64, "32 bytes of hex");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(text[2 * i]) << 4) | nibble(text[2 * i + 1]);
        i += 1;
    }
    out
}

/// `a - b` on big-endian 256-bit numbers; `a >= b`.
fn sub_be(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    assert_eq!(borrow, 0, "a >= b");
    out
}

/// `a + b` on little-endian 256-bit numbers; no overflow.
fn add_le(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    assert_eq!(carry, 0, "no overflow");
    out
}

/// `a - b` on little-endian 256-bit numbers; `a >= b`.
fn sub_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let (mut a_be, mut b_be) = (*a, *b);
    a_be.reverse();
    b_be.reverse();
    let mut out = sub_be(&a_be, &b_be);
    out.reverse();
    out
}

/// A secp256k1 signature `r || s` with `s` replaced by `n - s`: the same ECDSA signature in its
/// other (high-S) form.
fn high_s(signature: &[u8; 64]) -> Vec<u8> {
    let mut out = signature.to_vec();
    out[32..].copy_from_slice(&sub_be(&SECP256K1_N, &signature[32..]));
    out
}

/// An Ed25519 signature `R || S` with `S` replaced by `S + L`: the same equation, non-canonical.
fn s_plus_l(signature: &[u8; 64]) -> Vec<u8> {
    let mut out = signature.to_vec();
    out[32..].copy_from_slice(&add_le(&signature[32..], &ED25519_L));
    out
}

/// Numbers modulo L, little-endian, for the torsion case.
mod scalar {
    use super::ED25519_L;

    fn ge(a: &[u8; 32], b: &[u8; 32]) -> bool {
        for i in (0..32).rev() {
            if a[i] != b[i] {
                return a[i] > b[i];
            }
        }
        true
    }

    /// `a + b mod L` for `a, b < L` (the sum fits: L < 2^253).
    pub fn add(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let sum = super::add_le(a, b);
        if ge(&sum, &ED25519_L) { super::sub_le(&sum, &ED25519_L) } else { sum }
    }

    /// A little-endian number of any length, reduced mod L.
    pub fn reduce(le: &[u8]) -> [u8; 32] {
        let mut acc = [0u8; 32];
        for bit in (0..le.len() * 8).rev() {
            acc = add(&acc, &acc);
            if le[bit / 8] >> (bit % 8) & 1 == 1 {
                let mut one = [0u8; 32];
                one[0] = 1;
                acc = add(&acc, &one);
            }
        }
        acc
    }

    /// `a * b mod L`.
    pub fn mul(a: &[u8], b: &[u8]) -> [u8; 32] {
        let a = reduce(a);
        let mut acc = [0u8; 32];
        for bit in (0..b.len() * 8).rev() {
            acc = add(&acc, &acc);
            if b[bit / 8] >> (bit % 8) & 1 == 1 {
                acc = add(&acc, &a);
            }
        }
        acc
    }
}

/// An Ed25519 signature on `message` whose `R` is the honest `R` plus the point of order 2,
/// `(0, -1)`, with `S` recomputed for that `R`: `S = r + H(R' || A || M) a`. Cofactored
/// verification accepts it; the strict (cofactorless) verification dkvs uses does not, since
/// `S B - H A` is the honest `R`.
fn torsion_signature(seed: &[u8], public: &[u8], message: &[u8], honest_r: &[u8]) -> Vec<u8> {
    let h = Sha512::digest(seed);
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let r = scalar::reduce(&Sha512::new().chain_update(&h[32..]).chain_update(message).finalize());
    // (x, y) + (0, -1) = (-x, -y): y' = p - y, and the sign bit of x flips (x is not 0).
    let mut y = [0u8; 32];
    y.copy_from_slice(honest_r);
    let x_sign = y[31] & 0x80;
    y[31] &= 0x7f;
    let mut p = hex_literal("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed");
    p.reverse();
    let mut r_prime = sub_le(&p, &y);
    r_prime[31] |= x_sign ^ 0x80;
    let k = scalar::reduce(
        &Sha512::new().chain_update(r_prime).chain_update(public).chain_update(message).finalize(),
    );
    let s = scalar::add(&r, &scalar::mul(&a, &k));
    [r_prime, s].concat()
}

// ---------------------------------------------------------------------------------------------
// The generator: every case, in file order.

struct Expect {
    now_ms: u64,
    verdict: &'static str,
    detail: Option<&'static str>,
}

fn valid_at(now_ms: u64) -> Expect {
    Expect { now_ms, verdict: "valid", detail: None }
}

fn fails(verdict: &'static str) -> Expect {
    Expect { now_ms: NOW, verdict, detail: None }
}

fn fails_with(verdict: &'static str, detail: &'static str) -> Expect {
    Expect { now_ms: NOW, verdict, detail: Some(detail) }
}

fn secret(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

fn fields(key: &str, value: &[u8], seq: u64) -> Fields {
    Fields {
        key: key.to_owned(),
        value: hex::encode(value),
        seq: Dec(seq),
        issued_at_ms: Dec(ISSUED),
        expires_at_ms: Dec(ISSUED + TTL),
        tombstone: false,
        transfer: None,
    }
}

fn transfer_fields(from: &Keypair, key: &str, to: &PublicKey, seq: u64) -> TransferFields {
    let key = Key::new(key).expect("valid key");
    TransferFields {
        from: account_of(from),
        to_key_type: to.key_type().name().to_owned(),
        to_public_key: hex::encode(to.as_bytes()),
        seq: Dec(seq),
        signing_bytes: hex::encode(transfer_signing_bytes(&key, from.public(), to, seq)),
        signature: hex::encode(Transfer::sign(from, &key, to, seq).signature().0),
    }
}

/// A value of `len` bytes with a recognisable pattern: byte i is i mod 251.
fn big_value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

struct Generator {
    cases: Vec<Case>,
}

impl Generator {
    fn push(
        &mut self,
        name: &str,
        description: &str,
        signed: Option<(&Keypair, &Fields)>,
        produced_by: Produced,
        encoded: Vec<u8>,
        expect: Expect,
    ) {
        let record = signed.map(|(owner, fields)| sign(owner, fields));
        self.cases.push(Case {
            name: name.to_owned(),
            description: description.to_owned(),
            produced_by,
            owner: signed.map(|(owner, _)| account_of(owner)),
            record: signed.map(|(_, fields)| fields.clone()),
            signing_bytes: record.as_ref().map(|r| hex::encode(r.signing_bytes())),
            signature: record.as_ref().map(|r| hex::encode(r.signature().as_bytes())),
            encoded: hex::encode(encoded),
            now_ms: Dec(expect.now_ms),
            verdict: expect.verdict.to_owned(),
            detail: expect.detail.map(str::to_owned),
        });
    }

    /// A case whose bytes are the encoding of `fields` signed by `owner`.
    fn signed(&mut self, name: &str, description: &str, owner: &Keypair, f: &Fields, e: Expect) {
        let encoded = sign(owner, f).encode();
        self.push(name, description, Some((owner, f)), Produced::Sign, encoded, e);
    }

    /// A case whose bytes are the encoding of `fields` signed by `owner`, then edited.
    fn edited(
        &mut self,
        name: &str,
        description: &str,
        owner: &Keypair,
        f: &Fields,
        e: Expect,
        change: impl FnOnce(&Record) -> Vec<u8>,
    ) {
        let encoded = change(&sign(owner, f));
        self.push(name, description, Some((owner, f)), Produced::Edit, encoded, e);
    }

    /// A case of hand-made bytes.
    fn bytes(&mut self, name: &str, description: &str, encoded: Vec<u8>, e: Expect) {
        self.push(name, description, None, Produced::Bytes, encoded, e);
    }
}

fn generate() -> Vectors {
    let alice = Keypair::from_secret_bytes(KeyType::Ed25519, &secret(0x01)).expect("valid seed");
    let bob = Keypair::from_secret_bytes(KeyType::Secp256k1, &secret(0x21)).expect("valid scalar");
    let carol = Keypair::from_secret_bytes(KeyType::Ed25519, &secret(0x41)).expect("valid seed");
    let dave = Keypair::from_secret_bytes(KeyType::Secp256k1, &secret(0x61)).expect("valid scalar");
    let skew = Limits::default().max_clock_skew_ms;
    let mut g = Generator { cases: Vec::new() };

    // The cases both key types go through: owner, and another account of the same type.
    for (owner, other) in [(&alice, &carol), (&bob, &dave)] {
        let ty = owner.key_type().name();
        let id = owner.account_id();
        let scoped = fields(&format!("/{id}/profile/name"), b"hello, dkvs", 1);
        let n = |case: &str| format!("{ty}/{case}");

        g.signed(
            &n("scoped"),
            "Account-scoped key: the encoding has no owner field, the key names the owner.",
            owner,
            &scoped,
            valid_at(NOW),
        );
        g.signed(
            &n("shared"),
            "Shared name: the encoding carries the owner's public key with its type.",
            owner,
            &fields(&format!("/names/{ty}-shop"), b"https://example.invalid/shop", 1),
            valid_at(NOW),
        );
        g.signed(
            &n("tombstone"),
            "Tombstone: empty value, flags = 1, a higher sequence than the value it deletes.",
            owner,
            &Fields { tombstone: true, ..fields(&format!("/{id}/profile/name"), b"", 2) },
            valid_at(NOW),
        );
        g.signed(
            &n("value-10240"),
            "A value of exactly 10,240 bytes (byte i is i mod 251): the largest accepted.",
            owner,
            &fields(&format!("/{id}/blob"), &big_value(MAX_VALUE_LEN), 3),
            valid_at(NOW),
        );
        g.edited(
            &n("value-bit-flipped"),
            "The scoped case with bit 0 of the value's first byte flipped after signing.",
            owner,
            &scoped,
            fails_with("BadSignature", "Mismatch"),
            |r| edit(r, |p| p.bytes(2)[0] ^= 1),
        );
        let other_value = fields(&format!("/{id}/profile/name"), b"mallory was here", 1);
        let forged = sign(owner, &other_value).signature().0;
        g.edited(
            &n("signature-of-other-record"),
            "The scoped case with its signature replaced by the owner's signature over the same \
             fields with the value \"mallory was here\".",
            owner,
            &scoped,
            fails_with("BadSignature", "Mismatch"),
            |r| edit(r, |p| *p.bytes(9) = forged.to_vec()),
        );
        let by_other = other.sign_preimage(&sign(owner, &scoped).signing_bytes()).0;
        g.edited(
            &n("signed-by-other-account"),
            &format!(
                "The scoped case signed by another account ({}, secret key {}) over the same \
                 signing bytes: the key names the owner, so the other account's signature does \
                 not verify. (WrongOwner cannot come from bytes: the decoder takes the owner \
                 from the key.)",
                other.account_id(),
                hex::encode(other.secret_bytes().as_ref()),
            ),
            owner,
            &scoped,
            fails_with("BadSignature", "Mismatch"),
            |r| edit(r, |p| *p.bytes(9) = by_other.to_vec()),
        );
        g.signed(
            &n("expired"),
            "Validated at its expiry time: a record expires at expires_at_ms, inclusive.",
            owner,
            &scoped,
            Expect { now_ms: ISSUED + TTL, ..fails("Expired") },
        );
        g.signed(
            &n("last-valid-ms"),
            "Validated 1 ms before its expiry time.",
            owner,
            &scoped,
            valid_at(ISSUED + TTL - 1),
        );
        g.signed(
            &n("issued-in-future"),
            "Validated 300,001 ms before its issue time: 1 ms beyond the 5-minute skew bound.",
            owner,
            &scoped,
            Expect { now_ms: ISSUED - skew - 1, ..fails("IssuedInFuture") },
        );
        g.signed(
            &n("issued-at-skew-bound"),
            "Validated exactly 300,000 ms before its issue time: at the skew bound, accepted.",
            owner,
            &scoped,
            valid_at(ISSUED - skew),
        );
    }

    // Malleated signatures, one per key type.
    let bob_scoped = fields(&format!("/{}/profile/name", bob.account_id()), b"hello, dkvs", 1);
    g.edited(
        "secp256k1/high-s",
        "The secp256k1/scoped case with s replaced by n - s (n the group order): the same ECDSA \
         signature in high-S form, which dkvs refuses so that a record has one signature.",
        &bob,
        &bob_scoped,
        fails_with("BadSignature", "HighS"),
        |r| edit(r, |p| *p.bytes(9) = high_s(&r.signature().0)),
    );
    g.edited(
        "secp256k1/zero-r",
        "The secp256k1/scoped case with r (signature bytes 0..32) set to zero.",
        &bob,
        &bob_scoped,
        fails_with("BadSignature", "Malformed"),
        |r| edit(r, |p| p.bytes(9)[..32].fill(0)),
    );
    let alice_scoped = fields(&format!("/{}/profile/name", alice.account_id()), b"hello, dkvs", 1);
    g.edited(
        "ed25519/s-plus-l",
        "The ed25519/scoped case with S (signature bytes 32..64, little-endian) replaced by S + L \
         (L the group order): non-canonical S is refused.",
        &alice,
        &alice_scoped,
        fails_with("BadSignature", "Malformed"),
        |r| edit(r, |p| *p.bytes(9) = s_plus_l(&r.signature().0)),
    );
    g.edited(
        "ed25519/torsion-r",
        "The ed25519/scoped fields at sequence 6, re-signed by their owner with R' = R + T \
         (T = (0, -1), the point of order 2; r the RFC 8032 nonce, R = rB) and S = r + \
         SHA-512(R' || A || M) a mod L. Only the key's owner can make it. dkvs verifies \
         Ed25519 with the cofactored equation (ZIP-215), so it is valid, and single and batch \
         verification agree on it (sequence 6 makes the weight ed25519-dalek 3.0's batch \
         verification derives for it even: a strict single verifier would refuse what the \
         batch accepts).",
        &alice,
        &Fields { seq: Dec(6), ..alice_scoped.clone() },
        valid_at(NOW),
        |r| {
            let signature = torsion_signature(
                &secret(0x01),
                alice.public().as_bytes(),
                &r.signing_bytes(),
                &r.signature().0[..32],
            );
            edit(r, |p| *p.bytes(9) = signature)
        },
    );

    // Shared names changing hands.
    let shop = "/names/shop";
    let mut to_bob = fields(shop, b"bob's shop now", 5);
    to_bob.transfer = Some(transfer_fields(&alice, shop, bob.public(), 5));
    g.signed(
        "transfer/ed25519-to-secp256k1",
        "Alice (ed25519) hands /names/shop to Bob (secp256k1) for sequence 5; Bob signs.",
        &bob,
        &to_bob,
        valid_at(NOW),
    );
    let cafe = "/names/cafe";
    let mut to_alice = fields(cafe, b"alice's cafe now", 7);
    to_alice.transfer = Some(transfer_fields(&bob, cafe, alice.public(), 7));
    g.signed(
        "transfer/secp256k1-to-ed25519",
        "Bob (secp256k1) hands /names/cafe to Alice (ed25519) for sequence 7; Alice signs.",
        &alice,
        &to_alice,
        valid_at(NOW),
    );
    let mut replayed = fields(shop, b"bob's shop now", 6);
    replayed.transfer = Some(transfer_fields(&alice, shop, bob.public(), 5));
    g.signed(
        "transfer/replayed-at-other-seq",
        "Alice's consent for sequence 5 carried by Bob's record with sequence 6.",
        &bob,
        &replayed,
        fails_with("BadTransfer", "Mismatch"),
    );
    let mut stolen = fields(shop, b"carol's shop now", 5);
    stolen.transfer = Some(transfer_fields(&alice, shop, bob.public(), 5));
    g.signed(
        "transfer/taken-by-other-receiver",
        "Alice's consent naming Bob carried by Carol's record.",
        &carol,
        &stolen,
        fails_with("BadTransfer", "Mismatch"),
    );
    g.edited(
        "transfer/missing-from",
        "The transfer/ed25519-to-secp256k1 case with field 8.1 (transfer.from) removed.",
        &bob,
        &to_bob,
        fails_with("MissingField", "transfer.from"),
        |r| edit(r, |p| p.nested(8, |t| t.remove(1))),
    );
    g.edited(
        "transfer/signature-length",
        "The transfer/ed25519-to-secp256k1 case with the last byte of field 8.2 \
         (transfer.signature) removed: 63 bytes.",
        &bob,
        &to_bob,
        fails("SignatureLength"),
        |r| edit(r, |p| p.nested(8, |t| t.bytes(2).truncate(63))),
    );
    g.edited(
        "transfer/on-account-key",
        "The ed25519/scoped case with a field 8 added: Carol's transfer of the key to Alice for \
         sequence 1. Account-scoped keys never change hands (checked before any signature).",
        &alice,
        &alice_scoped,
        fails("TransferOnAccountKey"),
        |r| {
            let t = Transfer::sign(&carol, r.key(), alice.public(), 1);
            edit(r, |p| p.set(8, Wire::Bytes(pb_transfer(&t))))
        },
    );
    let alice_shop = fields("/names/ed25519-shop", b"https://example.invalid/shop", 1);
    g.edited(
        "transfer/to-self",
        "The ed25519/shared case with a field 8 added: Alice's transfer of the name to herself.",
        &alice,
        &alice_shop,
        fails("TransferToSelf"),
        |r| {
            let t = Transfer::sign(&alice, r.key(), alice.public(), 1);
            edit(r, |p| p.set(8, Wire::Bytes(pb_transfer(&t))))
        },
    );

    // Sizes.
    g.edited(
        "value/10241",
        "The ed25519/scoped case with field 2 (value) replaced by 10,241 bytes (byte i is i mod \
         251): refused for its size before any signature work.",
        &alice,
        &alice_scoped,
        fails("ValueTooLarge"),
        |r| edit(r, |p| *p.bytes(2) = big_value(MAX_VALUE_LEN + 1)),
    );
    g.edited(
        "encoding/at-limit",
        "The ed25519/scoped case padded with an unknown field 15 (zero bytes) to exactly 11,264 \
         bytes: unknown fields are skipped, as proto3 requires.",
        &alice,
        &alice_scoped,
        valid_at(NOW),
        |r| pad_to(&r.encode(), MAX_ENCODED_LEN),
    );
    g.edited(
        "encoding/too-large",
        "The ed25519/scoped case padded with an unknown field 15 to 11,265 bytes: refused before \
         decoding.",
        &alice,
        &alice_scoped,
        fails("TooLarge"),
        |r| pad_to(&r.encode(), MAX_ENCODED_LEN + 1),
    );
    g.edited(
        "encoding/unknown-field",
        "The ed25519/scoped case with an unknown varint field 100 = 42 appended: skipped.",
        &alice,
        &alice_scoped,
        valid_at(NOW),
        |r| edit(r, |p| p.0.push((100, Wire::Varint(42)))),
    );
    g.bytes(
        "encoding/truncated",
        "Field 1 (key) claims 5 bytes, 2 follow.",
        vec![0x0a, 0x05, b'/', b'a'],
        fails("Protobuf"),
    );
    g.bytes(
        "encoding/empty",
        "No bytes: every field takes its default, so the key is empty.",
        Vec::new(),
        fails_with("Key", "Length"),
    );
    let mut defaults = fields(&format!("/{}/d", alice.account_id()), b"", 0);
    defaults.issued_at_ms = Dec(0);
    defaults.expires_at_ms = Dec(TTL);
    g.signed(
        "encoding/defaults-omitted",
        "Sequence 0, issue time 0, empty value, no flags: proto3 leaves those fields out, and \
         the encoding is the key, the expiry and the signature.",
        &alice,
        &defaults,
        valid_at(1_000),
    );
    g.signed(
        "encoding/max-seq",
        "Sequence 2^64 - 1: a 10-byte varint.",
        &alice,
        &fields(&format!("/{}/profile/name", alice.account_id()), b"last", u64::MAX),
        valid_at(NOW),
    );

    // The owner field.
    g.edited(
        "owner/unknown-key-type",
        "The ed25519/shared case with field 3.1 (owner.type) changed from 1 to 9.",
        &alice,
        &alice_shop,
        fails("UnknownKeyType"),
        |r| edit(r, |p| p.nested(3, |o| o.set(1, Wire::Varint(9)))),
    );
    g.edited(
        "owner/key-length",
        "The ed25519/shared case with the last byte of field 3.2 (owner.key) removed.",
        &alice,
        &alice_shop,
        fails("PublicKeyLength"),
        |r| edit(r, |p| p.nested(3, |o| o.bytes(2).truncate(31))),
    );
    g.edited(
        "owner/small-order-ed25519",
        "The ed25519/shared case with field 3.2 (owner.key) set to the identity point (01 00..00), \
         a point of small order, which is not a key.",
        &alice,
        &alice_shop,
        fails("InvalidPublicKey"),
        |r| {
            let mut identity = vec![0u8; 32];
            identity[0] = 1;
            edit(r, |p| p.nested(3, |o| *o.bytes(2) = identity))
        },
    );
    g.edited(
        "owner/secp256k1-not-on-curve",
        "The secp256k1/shared case with field 3.2 (owner.key) set to 02 ff..ff: no point.",
        &bob,
        &fields("/names/secp256k1-shop", b"https://example.invalid/shop", 1),
        fails("InvalidPublicKey"),
        |r| {
            let mut key = vec![0xff; 33];
            key[0] = 0x02;
            edit(r, |p| p.nested(3, |o| *o.bytes(2) = key))
        },
    );
    g.edited(
        "owner/missing",
        "The ed25519/shared case with field 3 (owner) removed: a shared name needs it.",
        &alice,
        &alice_shop,
        fails_with("MissingField", "owner"),
        |r| edit(r, |p| p.remove(3)),
    );
    g.edited(
        "owner/redundant",
        "The ed25519/scoped case with field 3 (owner) added, holding the owner's own key: an \
         account-scoped key has exactly one encoding, without it.",
        &alice,
        &alice_scoped,
        fails("RedundantOwner"),
        |r| edit(r, |p| p.set(3, Wire::Bytes(pb_public_key(alice.public())))),
    );

    // Keys.
    g.signed(
        "key/account-root",
        "The bare account id is a key: the account's root.",
        &bob,
        &fields(&format!("/{}", bob.account_id()), b"root", 1),
        valid_at(NOW),
    );
    g.signed(
        "key/unicode",
        "A shared name with non-ASCII letters: keys are UTF-8, limits count bytes.",
        &carol,
        &fields("/ünïcödé/ok", b"ok", 1),
        valid_at(NOW),
    );
    let max_key = format!("/{}", "k".repeat(255));
    g.signed(
        "key/256-bytes",
        "A 256-byte shared name: the longest key.",
        &dave,
        &fields(&max_key, b"long", 1),
        valid_at(NOW),
    );
    let key_edit = |name: &str, description: &str, detail: &'static str, key: Vec<u8>| {
        (name.to_owned(), description.to_owned(), detail, key)
    };
    for (name, description, detail, key) in [
        key_edit(
            "key/257-bytes",
            "The key/256-bytes case with one more 'k' in field 1 (key).",
            "Length",
            format!("{max_key}k").into_bytes(),
        ),
        key_edit(
            "key/no-leading-slash",
            "The ed25519/shared case with field 1 (key) changed to \"names/ed25519-shop\".",
            "NoLeadingSlash",
            b"names/ed25519-shop".to_vec(),
        ),
        key_edit(
            "key/empty-segment",
            "The ed25519/shared case with field 1 (key) changed to \"/names//ed25519-shop\".",
            "EmptySegment",
            b"/names//ed25519-shop".to_vec(),
        ),
        key_edit(
            "key/trailing-slash",
            "The ed25519/shared case with field 1 (key) changed to \"/names/ed25519-shop/\".",
            "EmptySegment",
            b"/names/ed25519-shop/".to_vec(),
        ),
        key_edit(
            "key/control-character",
            "The ed25519/shared case with field 1 (key) changed to \"/names/ed25519\\u0007shop\".",
            "ControlCharacter",
            b"/names/ed25519\x07shop".to_vec(),
        ),
        key_edit(
            "key/invisible-character",
            "The ed25519/shared case with field 1 (key) changed to \"/names/ed25519\\u200bshop\" (a zero-width space).",
            "InvisibleCharacter",
            "/names/ed25519\u{200B}shop".as_bytes().to_vec(),
        ),
        key_edit(
            "key/not-nfc",
            "The ed25519/shared case with field 1 (key) changed to \"/names/cafe\\u0301\" (e and a combining acute accent, not NFC).",
            "NotNfc",
            "/names/cafe\u{301}".as_bytes().to_vec(),
        ),
        key_edit(
            "key/not-utf8",
            "The ed25519/shared case with field 1 (key) changed to 2f ff fe.",
            "NotUtf8",
            vec![b'/', 0xff, 0xfe],
        ),
        key_edit(
            "key/bad-account-id",
            "The ed25519/shared case with field 1 (key) changed to \"/ed1<alice's id with its \
             last character changed>/x\": a first segment that starts like an account id must \
             be one.",
            "BadAccountId",
            {
                let mut id = alice.account_id().to_string();
                let last = id.pop().expect("ids are not empty");
                id.push(if last == 'q' { 'p' } else { 'q' });
                format!("/{id}/x").into_bytes()
            },
        ),
        key_edit(
            "key/account-id-written-otherwise",
            "The ed25519/shared case with field 1 (key) changed to \"/ed1<alice's key with the \
             bits past its last byte set, checksummed>/x\": valid bech32m for alice's key, but \
             not her id (each account has one).",
            "BadAccountId",
            {
                use bech32::primitives::iter::{ByteIterExt as _, Fe32IterExt as _};
                let bytes = alice.public().as_bytes().iter().copied();
                let mut fes: Vec<bech32::Fe32> = bytes.bytes_to_fes().collect();
                let last = fes.len() - 1;
                fes[last] = bech32::Fe32::try_from(fes[last].to_u8() | 0b1111).expect("5 bits");
                let hrp = bech32::Hrp::parse("ed").expect("hrp");
                let id: String =
                    fes.into_iter().with_checksum::<bech32::Bech32m>(&hrp).chars().collect();
                format!("/{id}/x").into_bytes()
            },
        ),
        key_edit(
            "key/reads-like-account-id",
            "The ed25519/shared case with field 1 (key) changed to \"/\u{435}d1<the rest of \
             alice's id>/x\" (a Cyrillic e): a shared name that reads like alice's scope.",
            "LooksLikeAccountId",
            format!("/\u{435}{}/x", &alice.account_id().to_string()[1..]).into_bytes(),
        ),
    ] {
        let base = if detail == "Length" {
            (&dave, fields(&max_key, b"long", 1))
        } else {
            (&alice, alice_shop.clone())
        };
        g.edited(&name, &description, base.0, &base.1, fails_with("Key", detail), |r| {
            edit(r, |p| *p.bytes(1) = key)
        });
    }

    // Flags, times, signature field.
    g.edited(
        "flags/unknown",
        "The ed25519/scoped case with field 7 (flags) set to 2, a reserved bit.",
        &alice,
        &alice_scoped,
        fails("UnknownFlags"),
        |r| edit(r, |p| p.set(7, Wire::Varint(2))),
    );
    g.edited(
        "flags/tombstone-with-value",
        "The ed25519/scoped case with field 7 (flags) set to 1 (tombstone) while its value is \
         not empty.",
        &alice,
        &alice_scoped,
        fails("TombstoneWithValue"),
        |r| edit(r, |p| p.set(7, Wire::Varint(1))),
    );
    g.edited(
        "time/expires-at-issue",
        "The ed25519/scoped case with field 6 (expires_at_ms) set to its issue time.",
        &alice,
        &alice_scoped,
        fails("ExpiresBeforeIssued"),
        |r| edit(r, |p| p.set(6, Wire::Varint(ISSUED))),
    );
    g.edited(
        "signature/63-bytes",
        "The ed25519/scoped case with the last byte of field 9 (signature) removed.",
        &alice,
        &alice_scoped,
        fails("SignatureLength"),
        |r| edit(r, |p| p.bytes(9).truncate(63)),
    );
    g.edited(
        "signature/missing",
        "The ed25519/scoped case with field 9 (signature) removed: a 0-byte signature.",
        &alice,
        &alice_scoped,
        fails("SignatureLength"),
        |r| edit(r, |p| p.remove(9)),
    );

    // Order of the checks, when a record breaks several rules.
    g.edited(
        "order/value-size-before-key",
        "The value/10241 edit together with field 1 (key) changed to \"blob\": the value's size \
         is checked before the key.",
        &alice,
        &alice_scoped,
        fails("ValueTooLarge"),
        |r| {
            edit(r, |p| {
                *p.bytes(2) = big_value(MAX_VALUE_LEN + 1);
                *p.bytes(1) = b"blob".to_vec();
            })
        },
    );
    g.edited(
        "order/expired-before-signature",
        "The ed25519/value-bit-flipped edit, validated at the expiry time: times are checked \
         before signatures.",
        &alice,
        &alice_scoped,
        Expect { now_ms: ISSUED + TTL, ..fails("Expired") },
        |r| edit(r, |p| p.bytes(2)[0] ^= 1),
    );
    g.edited(
        "order/transfer-before-owner",
        "The transfer/ed25519-to-secp256k1 case with the record's value changed after signing \
         and the transfer's signature broken (first byte xor 1): the transfer is checked first.",
        &bob,
        &to_bob,
        fails_with("BadTransfer", "Mismatch"),
        |r| {
            edit(r, |p| {
                p.bytes(2)[0] ^= 1;
                p.nested(8, |t| t.bytes(2)[0] ^= 1);
            })
        },
    );

    Vectors {
        about: "dkvs record format v1 test vectors; see docs/record-format.md".to_owned(),
        record_domain: RECORD_DOMAIN.as_str().to_owned(),
        transfer_domain: TRANSFER_DOMAIN.as_str().to_owned(),
        max_value_len: MAX_VALUE_LEN,
        max_encoded_len: MAX_ENCODED_LEN,
        max_clock_skew_ms: Dec(skew),
        cases: g.cases,
    }
}
