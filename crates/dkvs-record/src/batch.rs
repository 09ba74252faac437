//! Validating many records at once, with Ed25519 batch verification.

use crate::{Limits, Record, ValidateError};

/// Validates `records`, returning one verdict per record in order.
///
/// Equivalent to calling [`Record::validate`] on each, but the owners' Ed25519 signatures are
/// checked together with batch verification, which costs about half as much per signature. If
/// the batch fails, each signature is checked alone to find the bad ones, so one forged record
/// costs the sender's batch its speed, not the honest records their verdicts.
pub fn validate_batch(
    records: &[Record],
    now_ms: u64,
    limits: &Limits,
) -> Vec<Result<(), ValidateError>> {
    let mut verdicts: Vec<Result<(), ValidateError>> =
        records.iter().map(|r| r.validate_unsigned(now_ms, limits)).collect();
    let mut batch = Vec::new();
    for (i, record) in records.iter().enumerate() {
        if verdicts[i].is_err() {
            continue;
        }
        match record.owner().as_ed25519() {
            Some(key) => batch.push((i, *key, record.signing_bytes())),
            None => verdicts[i] = record.validate(now_ms, limits),
        }
    }
    if batch.is_empty() {
        return verdicts;
    }
    let messages: Vec<&[u8]> = batch.iter().map(|(_, _, m)| m.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = batch
        .iter()
        .map(|(i, _, _)| ed25519_dalek::Signature::from_bytes(records[*i].signature().as_bytes()))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = batch.iter().map(|(_, k, _)| *k).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
        for (i, _, message) in &batch {
            let record = &records[*i];
            verdicts[*i] = record
                .owner()
                .verify_preimage(message, record.signature())
                .map_err(ValidateError::BadSignature);
        }
    }
    verdicts
}
