//! Validating many records at once, with Ed25519 batch verification.

use crate::{Limits, Record, ValidateError};

/// Validates `records`, returning one verdict per record in order.
///
/// Equivalent to calling [`Record::validate`] on each, but the owners' Ed25519 signatures are
/// checked together ([`dkvs_account::verify_batch`]), which costs about half as much per
/// signature; one forged record costs the sender's batch its speed, not the honest records
/// their verdicts.
pub fn validate_batch(
    records: &[Record],
    now_ms: u64,
    limits: &Limits,
) -> Vec<Result<(), ValidateError>> {
    let mut verdicts: Vec<Result<(), ValidateError>> =
        records.iter().map(|r| r.validate_unsigned(now_ms, limits)).collect();
    let preimages: Vec<(usize, Vec<u8>)> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_ok())
        .map(|(i, _)| (i, records[i].signing_bytes()))
        .collect();
    let items: Vec<(&dkvs_account::PublicKey, &[u8], &dkvs_account::Signature)> = preimages
        .iter()
        .map(|(i, preimage)| (records[*i].owner(), preimage.as_slice(), records[*i].signature()))
        .collect();
    for ((i, _), verdict) in preimages.iter().zip(dkvs_account::verify_batch(&items)) {
        verdicts[*i] = verdict.map_err(ValidateError::BadSignature);
    }
    verdicts
}
