//! A disclosure under a granted request, through the boundary's read path: for each subject the
//! request names, one decision (`disclose` on the subject, purpose `legal`, allowed only while
//! a granted request names them and its deadline has not passed), then each record of a granted
//! category opened under a log entry of its own, whose annex names the request (its
//! justification). The package is a ZIP:
//!
//! - `records/<subject>/<category>.json`: the records, as an export holds them;
//! - `manifest.txt`: the SHA-256 of every file, a C2SP signed note under the log's key
//!   (`clover/government-disclosure/v1`, the request, the records, the first entry).
//!
//! A `disclosed` entry counts the records. While the request's gag holds, the subjects' own
//! access histories leave these entries out; they appear once it ends.

use std::io::Write;

use clover_event::EventKind;
use clover_model::{Action, SubjectId};
use clover_store::RecordRow;
use time::OffsetDateTime;

use crate::boundary::Boundary;
use crate::government::book;
use crate::pipeline::{self, Ask, Caller};
use crate::problem::ApiError;
use crate::subjects::certificate::{random_hex, rfc3339};
use crate::subjects::export::{Archive, Hashing, digest_file};

/// The first line of a disclosure's manifest.
pub const MANIFEST_FORMAT: &str = "clover/government-disclosure/v1";

/// How many records are opened (and logged) at once.
const PAGE: u32 = 256;

/// A finished disclosure: the package in a temporary file (deleted when dropped).
#[derive(Debug)]
pub struct Disclosure {
    /// The ZIP.
    pub file: tempfile::NamedTempFile,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// How many records it holds.
    pub records: u64,
    /// The `disclosed` entry.
    pub log_index: u64,
}

/// A disclosure refused for the request's state: logged, answered 409.
async fn not_disclosable(boundary: &Boundary, caller: &Caller, id: &str, why: String) -> ApiError {
    tracing::warn!(request = %id, principal = %caller.principal.id, reason = %why, "a disclosure was refused");
    let logged = crate::pipeline::events::log_without_data(
        boundary,
        EventKind::GovernmentRequest,
        Some(caller),
        Action::Disclose.as_str(),
        None,
        format!("disclosure refused: {why}"),
        Some(&format!("request {id}")),
    )
    .await;
    ApiError::SubjectRefused {
        status: axum::http::StatusCode::CONFLICT,
        slug: "not-disclosable",
        title: "Not disclosable",
        detail: format!("request {id}: {why}; nothing was disclosed"),
        log_index: logged.ok(),
    }
}

/// Discloses what request `id` grants, for `caller` (the legal team).
pub async fn disclose(boundary: &Boundary, caller: &Caller, id: &str) -> Result<Disclosure, ApiError> {
    book::gate(boundary, caller, id).await?;
    let (row, mut details) = book::load(boundary, id).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if row.state != book::GRANTED && row.state != book::PARTIALLY_GRANTED {
        let why = match details.outcome.as_deref() {
            Some("rejected") => "it was rejected".to_owned(),
            _ if row.state == book::CLOSED => "it is closed".to_owned(),
            _ => "it is not granted (yet)".to_owned(),
        };
        return Err(not_disclosable(boundary, caller, id, why).await);
    }
    if details.instrument == clover_requests::Instrument::PreservationOrder {
        return Err(not_disclosable(
            boundary,
            caller,
            id,
            "a preservation order keeps data, it discloses none".to_owned(),
        )
        .await);
    }
    if now > details.deadline {
        return Err(not_disclosable(
            boundary,
            caller,
            id,
            format!("its deadline ({}) has passed", book::at(details.deadline)),
        )
        .await);
    }
    // Every entry of this disclosure names the request (its annex's justification), for the
    // purpose `legal`.
    let acting = Caller { purpose: Some("legal".to_owned()), justification: Some(id.to_owned()), ..caller.clone() };
    let dir = boundary.config().data_dir.join("exports");
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    let file = tempfile::NamedTempFile::new_in(&dir).map_err(ApiError::internal)?;
    let target = file.reopen().map_err(ApiError::internal)?;
    let mut archive = Archive { zip: zip::ZipWriter::new(target), digests: Vec::new() };
    let mut written = 0u64;
    let mut first_index = None;
    for subject in details.subject_ids() {
        let Some(stored) = boundary.store().subject(&subject).await.map_err(ApiError::internal)? else { continue };
        let minor = pipeline::metadata::subject_minor(boundary, &stored).await;
        let ask =
            Ask { action: Action::Disclose, subject: &subject, record: None, version: None, subject_minor: minor };
        let receipt = pipeline::decide_and_log(boundary, &acting, EventKind::Access, &ask).await?;
        first_index.get_or_insert(receipt.index());
        drop(receipt);
        for category in &details.granted_categories {
            written += disclose_category(boundary, &acting, &mut archive, &subject, category, minor).await?;
        }
    }
    let disclosure_id = format!("gd-{}", random_hex(12)?);
    let mut text = format!(
        "{MANIFEST_FORMAT}\nregion {}\nrequest {id}\ndisclosure {disclosure_id}\nrecords {written}\ncreated {}\nlog {}\n",
        boundary.region(),
        rfc3339(OffsetDateTime::now_utc()),
        first_index.map_or_else(|| "none".to_owned(), |i| i.to_string()),
    );
    for (name, digest) in &archive.digests {
        text.push_str(&format!("file {digest} {name}\n"));
    }
    let manifest = boundary.sign_note(&text).map_err(ApiError::internal)?;
    archive.file("manifest.txt", |w| w.write_all(manifest.as_bytes()))?;
    let mut written_file = archive.zip.finish().map_err(ApiError::internal)?;
    written_file.flush().map_err(ApiError::internal)?;
    drop(written_file);
    let (size, sha256) = digest_file(file.path())?;

    details.disclosures += 1;
    details.disclosed_records += written;
    let mut facts = book::facts(id, "disclosed", &details);
    facts.count = written;
    let note = format!("disclosure {disclosure_id}: package sha256:{sha256}");
    let log_index = book::append(boundary, Some(caller), Action::Disclose, None, facts, Some(&note)).await?;
    book::save(boundary, &row, &details, &row.state, log_index).await?;
    tracing::info!(request = %id, disclosure = %disclosure_id, records = written, log_index, "records disclosed to an authority");
    Ok(Disclosure { file, size, sha256, records: written, log_index })
}

/// Writes `subject`'s records of `category` into the package, each opened under an entry of its
/// own; how many.
async fn disclose_category(
    boundary: &Boundary,
    caller: &Caller,
    archive: &mut Archive<std::fs::File>,
    subject: &SubjectId,
    category: &str,
    minor: bool,
) -> Result<u64, ApiError> {
    let name = format!("records/{}/{category}.json", subject.as_str());
    archive.zip.start_file(&name, Archive::<std::fs::File>::options()).map_err(ApiError::internal)?;
    let mut out =
        Hashing { inner: &mut archive.zip, digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256) };
    out.write_all(b"[").map_err(ApiError::internal)?;
    let mut written = 0u64;
    let mut after = String::new();
    loop {
        let page = boundary
            .store()
            .records_of_subject(subject, Some((category, after.as_str())), PAGE)
            .await
            .map_err(ApiError::internal)?;
        let page: Vec<RecordRow> = page.into_iter().filter(|r| r.category.as_str() == category).collect();
        let Some(last) = page.last() else { break };
        after = last.record_id.to_string();
        let asks: Vec<Ask<'_>> = page
            .iter()
            .map(|r| Ask {
                action: Action::Disclose,
                subject,
                record: Some((r.record_id, &r.category)),
                version: Some(r.version),
                subject_minor: minor,
            })
            .collect();
        let receipts = pipeline::decide_and_log_many(boundary, caller, EventKind::Access, &asks).await?;
        for (row, receipt) in page.iter().zip(receipts) {
            let gone = || ApiError::NotFound { what: "record", id: row.record_id.to_string() };
            let fields = pipeline::sealing::open_record(boundary, &receipt, row, gone).await?;
            let record = serde_json::json!({
                "record_id": row.record_id.to_string(),
                "category": row.category.as_str(),
                "version": row.version,
                "created_at": rfc3339(row.created_at),
                "fields": fields.as_map(),
            });
            out.write_all(if written == 0 { b"\n" } else { b",\n" }).map_err(ApiError::internal)?;
            serde_json::to_writer(&mut out, &record).map_err(ApiError::internal)?;
            written += 1;
        }
    }
    out.write_all(b"\n]\n").map_err(ApiError::internal)?;
    let digest = hex::encode(out.digest.finish().as_ref());
    archive.digests.push((name, digest));
    Ok(written)
}
