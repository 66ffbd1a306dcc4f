//! A subject's export (GDPR Art. 15 and 20): a ZIP archive holding
//!
//! - `records/<category>.json`: every record of the category, a JSON array of
//!   `{"record_id", "category", "version", "created_at", "fields"}` (`docs/subjects.md`);
//! - `accesses.json`: the access history, each entry with its inclusion proof, as
//!   `GET /v1/me/accesses` answers it;
//! - `summary.html`: what a person reads first: what is held, by category, and who accessed it;
//! - `manifest.txt`: the SHA-256 of every file above, a C2SP signed note under the log's key.
//!
//! The export is decided once, on the subject; then each record is opened under a log entry
//! of its own (the custodian hands out one record's key per entry), a page at a time, and
//! written out at once, so that memory stays bounded however many records there are. The
//! archive is built in a temporary file in the data directory and handed out only once it is
//! whole (and, with an `age` recipient, encrypted): a failed export leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{Seek, Write};

use clover_event::EventKind;
use clover_model::{Action, SubjectId};
use clover_policy::Decision;
use clover_store::RecordRow;
use serde::Serialize;

use crate::boundary::Boundary;
use crate::pipeline::{self, Ask, Caller};
use crate::problem::ApiError;
use crate::subjects::accesses;
use crate::subjects::certificate::{random_hex, rfc3339};
use crate::subjects::erasure::categories_of;

/// The first line of an export's manifest.
pub const MANIFEST_FORMAT: &str = "clover/subject-export/v1";

/// How many records are opened (and logged) at once.
const PAGE: u32 = 256;

/// A record as the export holds it.
#[derive(Serialize)]
struct ExportedRecord<'a> {
    record_id: String,
    category: &'a str,
    version: u32,
    created_at: String,
    fields: &'a serde_json::Map<String, serde_json::Value>,
}

/// A finished export: the archive in a temporary file (deleted when dropped), and what it holds.
#[derive(Debug)]
pub struct Export {
    /// The archive (a ZIP, or an `age` file holding it).
    pub file: tempfile::NamedTempFile,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Whether it is encrypted to an `age` recipient.
    pub encrypted: bool,
    /// The export's id.
    pub export_id: String,
    /// How many records it holds.
    pub records: u64,
    /// The decision that allowed it.
    pub decision: Decision,
    /// The log entry of that decision.
    pub log_index: u64,
}

/// Where the archive's bytes go: the temporary file itself, or an age stream into it.
enum Sink {
    /// The file.
    Plain(std::fs::File),
    /// An age stream to one recipient, into the file.
    Age(age::stream::StreamWriter<std::fs::File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(file) => file.write(buf),
            Self::Age(stream) => stream.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(file) => file.flush(),
            Self::Age(stream) => stream.flush(),
        }
    }
}

impl Sink {
    /// Ends the stream (an age stream's last chunk) and gives back the file.
    fn finish(self) -> std::io::Result<std::fs::File> {
        match self {
            Self::Plain(file) => Ok(file),
            Self::Age(stream) => stream.finish(),
        }
    }
}

/// A writer that hashes what goes through it.
pub(crate) struct Hashing<W> {
    pub(crate) inner: W,
    pub(crate) digest: aws_lc_rs::digest::Context,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The ZIP being written, and the digest of each file in it.
pub(crate) struct Archive<W: Write + Seek> {
    pub(crate) zip: zip::ZipWriter<W>,
    pub(crate) digests: Vec<(String, String)>,
}

impl<W: Write + Seek> Archive<W> {
    pub(crate) fn options() -> zip::write::SimpleFileOptions {
        let now = time::OffsetDateTime::now_utc();
        let stamp = zip::DateTime::from_date_and_time(
            u16::try_from(now.year()).unwrap_or(1980),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
        )
        .unwrap_or_default();
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(stamp)
    }

    /// Writes one file, made by `fill`, and keeps its digest.
    pub(crate) fn file(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), ApiError> {
        self.zip.start_file(name, Self::options()).map_err(ApiError::internal)?;
        let mut hashing =
            Hashing { inner: &mut self.zip, digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256) };
        fill(&mut hashing).map_err(ApiError::internal)?;
        let digest = hex::encode(hashing.digest.finish().as_ref());
        self.digests.push((name.to_owned(), digest));
        Ok(())
    }
}

/// A refusal for what the export asks.
fn refused(
    status: axum::http::StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    log_index: u64,
) -> ApiError {
    ApiError::SubjectRefused { status, slug, title, detail, log_index: Some(log_index) }
}

/// Parses an `age` recipient (`age1...`), or says what is wrong with it.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, ApiError> {
    text.trim().parse::<age::x25519::Recipient>().map_err(|e| {
        ApiError::InvalidBody(format!(
            "age_recipient {:?} is not an age X25519 recipient (age1...): {e}",
            text.chars().take(80).collect::<String>()
        ))
    })
}

/// Builds `subject`'s export for `caller`: decided by policy and logged, every record opened
/// under an entry of its own, written to a temporary file, encrypted to `recipient` if given.
pub async fn build(
    boundary: &Boundary,
    caller: &Caller,
    subject: &SubjectId,
    recipient: Option<age::x25519::Recipient>,
) -> Result<Export, ApiError> {
    let stored = boundary.store().subject(subject).await.map_err(ApiError::internal)?;
    let minor = match &stored {
        Some(row) => pipeline::metadata::subject_minor(boundary, row).await,
        None => true,
    };
    let ask = Ask { action: Action::ExportSubject, subject, record: None, version: None, subject_minor: minor };
    let receipt = pipeline::decide_and_log(boundary, caller, EventKind::Access, &ask).await?;
    let decision = receipt.permit().decision().clone();
    let log_index = receipt.index();
    drop(receipt);
    if stored.is_none() {
        return Err(refused(
            axum::http::StatusCode::NOT_FOUND,
            "nothing-held",
            "Nothing held",
            format!("no data is held about subject {:?} (never registered, or erased)", subject.as_str()),
            log_index,
        ));
    }
    let counts = categories_of(boundary, subject).await?;
    let total: u64 = counts.values().sum();
    let limit = boundary.config().subjects.max_export_records;
    if total > limit {
        return Err(refused(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "export-too-large",
            "Export too large",
            format!(
                "subject {:?} has {total} records, over [subjects] max_export_records ({limit}): nothing was \
                 exported; ask the region's privacy team for an export in parts",
                subject.as_str()
            ),
            log_index,
        ));
    }

    let export_id = format!("ex-{}", random_hex(16)?);
    let dir = boundary.config().data_dir.join("exports");
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    let file = tempfile::NamedTempFile::new_in(&dir).map_err(ApiError::internal)?;
    let target = file.reopen().map_err(ApiError::internal)?;
    // With a recipient, the ZIP is written straight into the age stream: no plaintext archive
    // ever reaches the disk.
    let encrypted = recipient.is_some();
    let sink = match recipient {
        None => Sink::Plain(target),
        Some(recipient) => {
            let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(ApiError::internal)?;
            Sink::Age(encryptor.wrap_output(target).map_err(ApiError::internal)?)
        }
    };
    let mut archive = Archive { zip: zip::ZipWriter::new_stream(sink), digests: Vec::new() };

    // The records, a category at a time, a page at a time.
    let mut written = 0u64;
    for category in counts.keys() {
        let name = format!("records/{category}.json");
        archive.zip.start_file(&name, Archive::<std::fs::File>::options()).map_err(ApiError::internal)?;
        let mut out =
            Hashing { inner: &mut archive.zip, digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256) };
        out.write_all(b"[").map_err(ApiError::internal)?;
        let mut first = true;
        let mut after = String::new();
        loop {
            let page = boundary
                .store()
                .records_of_subject(subject, Some((category.as_str(), after.as_str())), PAGE)
                .await
                .map_err(ApiError::internal)?;
            let page: Vec<RecordRow> = page.into_iter().filter(|r| r.category.as_str() == category).collect();
            let Some(last) = page.last() else { break };
            after = last.record_id.to_string();
            let asks: Vec<Ask<'_>> = page
                .iter()
                .map(|r| Ask {
                    action: Action::ExportSubject,
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
                let record = ExportedRecord {
                    record_id: row.record_id.to_string(),
                    category: row.category.as_str(),
                    version: row.version,
                    created_at: rfc3339(row.created_at),
                    fields: fields.as_map(),
                };
                out.write_all(if first { b"\n" } else { b",\n" }).map_err(ApiError::internal)?;
                first = false;
                serde_json::to_writer(&mut out, &record).map_err(ApiError::internal)?;
                written += 1;
            }
        }
        out.write_all(b"\n]\n").map_err(ApiError::internal)?;
        let digest = hex::encode(out.digest.finish().as_ref());
        archive.digests.push((name, digest));
    }

    // The access history, this export's own entries included, each with its proof: written
    // entry by entry (only the indexes, the counts and the latest hundred are kept).
    let indexes = accesses::indexes_about(boundary, subject, true).await?;
    let (checkpoint, tree_size) = accesses::served(boundary)?;
    let mut by_kind: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut recent: std::collections::VecDeque<accesses::MyAccess> = std::collections::VecDeque::new();
    {
        archive.zip.start_file("accesses.json", Archive::<std::fs::File>::options()).map_err(ApiError::internal)?;
        let mut out =
            Hashing { inner: &mut archive.zip, digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256) };
        let head = serde_json::json!({
            "checkpoint": checkpoint,
            "tree_size": tree_size,
            "log_vkey": boundary.log_vkey().to_string(),
        })
        .to_string();
        // The head's object, opened again to take the entries.
        let head = head.strip_suffix('}').unwrap_or(&head);
        out.write_all(head.as_bytes()).map_err(ApiError::internal)?;
        out.write_all(b",\"entries\":[").map_err(ApiError::internal)?;
        for (i, index) in indexes.iter().enumerate() {
            let entry = accesses::entry(boundary, *index, tree_size).await?;
            let who = entry.principal_kind.clone().unwrap_or_else(|| "the boundary".to_owned());
            *by_kind.entry((entry.action.clone().unwrap_or_else(|| entry.kind.clone()), who)).or_insert(0) += 1;
            out.write_all(if i == 0 { b"\n" } else { b",\n" }).map_err(ApiError::internal)?;
            serde_json::to_writer(&mut out, &entry).map_err(ApiError::internal)?;
            if entry.action.as_deref() != Some("export-subject") {
                recent.push_front(entry);
                recent.truncate(100);
            }
        }
        out.write_all(b"\n]}\n").map_err(ApiError::internal)?;
        let digest = hex::encode(out.digest.finish().as_ref());
        archive.digests.push(("accesses.json".to_owned(), digest));
    }
    let recent: Vec<&accesses::MyAccess> = recent.iter().collect();
    let summary = summary_html(boundary, subject, &export_id, &counts, &by_kind, &recent);
    archive.file("summary.html", |w| w.write_all(summary.as_bytes()))?;

    // The manifest: every file's digest, signed.
    let mut text = format!(
        "{MANIFEST_FORMAT}\nregion {}\nexport {export_id}\nsubject {}\nrecords {written}\ncreated {}\nlog {log_index}\n",
        boundary.region(),
        subject.as_str(),
        rfc3339(time::OffsetDateTime::now_utc()),
    );
    for (name, digest) in &archive.digests {
        text.push_str(&format!("file {digest} {name}\n"));
    }
    let manifest = boundary.sign_note(&text).map_err(ApiError::internal)?;
    archive.file("manifest.txt", |w| w.write_all(manifest.as_bytes()))?;
    let sink = archive.zip.finish().map_err(ApiError::internal)?.into_inner();
    let mut written_file = sink.finish().map_err(ApiError::internal)?;
    written_file.flush().map_err(ApiError::internal)?;
    drop(written_file);
    let (size, sha256) = digest_file(file.path())?;
    tracing::info!(subject = %subject, export = %export_id, records = written, encrypted, log_index, "subject export built");
    Ok(Export { file, size, sha256, encrypted, export_id, records: written, decision, log_index })
}

/// Deletes what a crashed export left in `data_dir/exports` (logged: it held personal data).
pub fn sweep(data_dir: &std::path::Path) {
    let dir = data_dir.join("exports");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::warn!(file = %entry.path().display(), "deleted an export a crash left behind"),
            Err(e) => {
                tracing::error!(file = %entry.path().display(), error = %e, "cannot delete an export a crash left behind")
            }
        }
    }
}

/// The size and SHA-256 of a file.
pub(crate) fn digest_file(path: &std::path::Path) -> Result<(u64, String), ApiError> {
    let mut file = std::fs::File::open(path).map_err(ApiError::internal)?;
    let mut hashing =
        Hashing { inner: std::io::sink(), digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256) };
    let size = std::io::copy(&mut file, &mut hashing).map_err(ApiError::internal)?;
    Ok((size, hex::encode(hashing.digest.finish().as_ref())))
}

/// The page a person reads first.
fn summary_html(
    boundary: &Boundary,
    subject: &SubjectId,
    export_id: &str,
    counts: &BTreeMap<String, u64>,
    by_kind: &BTreeMap<(String, String), u64>,
    recent: &[&accesses::MyAccess],
) -> String {
    use maud::{DOCTYPE, html};
    let total: u64 = counts.values().sum();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Your data held in region " (boundary.region().as_str()) }
                style { "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
                         table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}\
                         th{background:#f3f3f3}code{font-size:.9em}" }
            }
            body {
                h1 { "Your data held in region " (boundary.region().as_str()) }
                p { "This archive (export " code { (export_id) } ") holds every record kept about "
                    code { (subject.as_str()) } ", " (total) " in all, and every entry of the transparency log about you. "
                    "The file " code { "manifest.txt" } " lists the SHA-256 of every file, signed with the log's key." }
                h2 { "What is held" }
                table {
                    tr { th { "Category" } th { "Records" } th { "File" } }
                    @for (category, n) in counts {
                        tr { td { (category) } td { (n) } td { code { "records/" (category) ".json" } } }
                    }
                }
                h2 { "Who accessed it" }
                p { "By kind of request and of caller. Employees are shown by role, never by name." }
                table {
                    tr { th { "Request" } th { "By" } th { "Times" } }
                    @for ((action, who), n) in by_kind {
                        tr { td { (action) } td { (who) } td { (n) } }
                    }
                }
                h2 { "Latest accesses" }
                p { "Up to 100, newest first, this export's own left out. Each is in " code { "accesses.json" }
                    " with its inclusion proof (see docs/verify-my-accesses.md)." }
                table {
                    tr { th { "When" } th { "What" } th { "Decision" } th { "By" } th { "Roles" } th { "Purpose" } th { "From" } }
                    @for entry in recent {
                        tr {
                            td { (entry.time) }
                            td { (entry.action.as_deref().unwrap_or(&entry.kind)) " " (entry.category.as_deref().unwrap_or("")) }
                            td { (entry.decision.as_deref().unwrap_or("")) }
                            td { (entry.principal_kind.as_deref().unwrap_or("")) " (" (entry.principal_region.as_deref().unwrap_or("")) ")" }
                            td { (entry.roles.join(", ")) }
                            td { (entry.purpose.as_deref().unwrap_or("")) }
                            td { @match &entry.origin {
                                Some(origin) => { (origin.site.as_deref().unwrap_or("an unknown address")) " " (origin.region.as_deref().unwrap_or("")) }
                                None => { "" }
                            } }
                        }
                    }
                }
            }
        }
    }
    .into_string()
}
