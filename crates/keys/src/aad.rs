//! Associated data: what each ciphertext is bound to.
//!
//! Each function returns the canonical bytes authenticated with one kind of ciphertext: a
//! label naming the kind and format version, then each field as a 4-byte big-endian length and
//! its bytes. Any change of region, subject, record or version changes the bytes, so a
//! ciphertext opened anywhere but where it was written fails authentication.

use clover_model::{RecordId, Region, SubjectId};

fn encode(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>() + 4);
    for part in std::iter::once(&label.as_bytes()).chain(parts) {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The associated data of a record's fields.
pub fn record(region: &Region, subject: &SubjectId, record: &RecordId, version: u32) -> Vec<u8> {
    encode(
        "clover/record-fields/v1",
        &[region.as_str().as_bytes(), subject.as_str().as_bytes(), record.as_bytes(), &version.to_be_bytes()],
    )
}

/// What the associated data of a record's fields ([`record`]) binds: the region, the subject,
/// the record id's 16 bytes and the version; `None` for associated data of another kind or
/// malformed. A custodian reads it to check that a ciphertext it is asked to open is the record
/// version its receipt is for.
pub fn parse_record(aad: &[u8]) -> Option<(String, String, [u8; 16], u32)> {
    let mut parts = Vec::with_capacity(5);
    let mut rest = aad;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if tail.len() < len {
            return None;
        }
        let (part, tail) = tail.split_at(len);
        parts.push(part);
        rest = tail;
    }
    let [label, region, subject, record, version] = parts.as_slice() else { return None };
    if *label != b"clover/record-fields/v1" {
        return None;
    }
    Some((
        String::from_utf8(region.to_vec()).ok()?,
        String::from_utf8(subject.to_vec()).ok()?,
        <[u8; 16]>::try_from(*record).ok()?,
        u32::from_be_bytes(<[u8; 4]>::try_from(*version).ok()?),
    ))
}

/// The associated data of a subject's own attributes (birth date).
pub fn subject(region: &Region, subject: &SubjectId) -> Vec<u8> {
    encode("clover/subject-attributes/v1", &[region.as_str().as_bytes(), subject.as_str().as_bytes()])
}

/// The associated data of a subject's sealed metadata.
pub fn subject_metadata(region: &Region, subject: &SubjectId, kek_version: u32) -> Vec<u8> {
    encode(
        "clover/subject-metadata/v1",
        &[region.as_str().as_bytes(), subject.as_str().as_bytes(), &kek_version.to_be_bytes()],
    )
}

/// The associated data of a data key wrapped in custody, where the subject is known by the
/// log's keyed hash of its id (the key store holds no subject id).
pub fn data_key_by_hash(region: &Region, subject_hash: &str, kek_version: u32) -> Vec<u8> {
    encode("clover/custody-key/v1", &[region.as_str().as_bytes(), subject_hash.as_bytes(), &kek_version.to_be_bytes()])
}

/// The associated data of a subject's metadata sealed with the region's metadata key.
pub fn subject_metadata_v2(region: &Region, subject: &SubjectId) -> Vec<u8> {
    encode("clover/subject-metadata/v2", &[region.as_str().as_bytes(), subject.as_str().as_bytes()])
}

/// What a derived key is bound to (the HKDF info of [`crate::DataKey::derive`]): a record
/// version's key, bound to region, subject (by the region's keyed hash, as the custodian knows
/// them), record, version and category; or, with no record, the key of the subject's own
/// attributes.
pub fn key_scope(
    region: &Region,
    subject_hash: &str,
    record: Option<&str>,
    version: Option<u32>,
    category: Option<&str>,
) -> Vec<u8> {
    match record {
        Some(record) => encode(
            "clover/record-version-key/v1",
            &[
                region.as_str().as_bytes(),
                subject_hash.as_bytes(),
                record.as_bytes(),
                &version.unwrap_or(0).to_be_bytes(),
                category.unwrap_or_default().as_bytes(),
            ],
        ),
        None => encode("clover/subject-attributes-key/v1", &[region.as_str().as_bytes(), subject_hash.as_bytes()]),
    }
}

/// The associated data of a data key wrapped by an earlier version of Clover, which kept it in
/// the data store.
pub fn data_key(region: &Region, subject: &SubjectId, kek_version: u32) -> Vec<u8> {
    encode("clover/data-key/v1", &[region.as_str().as_bytes(), subject.as_str().as_bytes(), &kek_version.to_be_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_be_shifted_between_parts() {
        let eu: Region = "eu".parse().unwrap();
        let a = subject(&eu, &"ab".parse().unwrap());
        let b = subject(&"eua".parse().unwrap(), &"b".parse().unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn a_records_associated_data_reads_back_and_nothing_else_does() {
        let eu: Region = "eu".parse().unwrap();
        let record_id = RecordId::random();
        let aad = record(&eu, &"u-1".parse().unwrap(), &record_id, 7);
        assert_eq!(parse_record(&aad), Some(("eu".to_owned(), "u-1".to_owned(), *record_id.as_bytes(), 7)));
        assert_eq!(parse_record(&subject(&eu, &"u-1".parse().unwrap())), None);
        assert_eq!(parse_record(&aad[..aad.len() - 1]), None);
        assert_eq!(parse_record(b""), None);
        let mut longer = aad.clone();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_record(&longer), None);
    }
}
