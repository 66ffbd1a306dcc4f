//! One conformance suite, run unchanged against every backend: SQLite in a temporary directory,
//! and PostgreSQL in a database made for each test and dropped after it.
//!
//! PostgreSQL: `CLOVER_TEST_POSTGRES` names a server to create databases on (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `.ci/run` makes sure one runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;

use clover_model::{RecordId, SubjectId};
use clover_store::{
    ApprovalRow, Counts, GovernmentRequestRow, PostgresStore, RecordRow, SqliteStore, Store, StoreError, SubjectRow,
    TransferCursor, TransferRow, TransferSelection,
};
use clover_testkit::TestDatabase;
use time::{Duration, OffsetDateTime};

/// A backend under test, and how to clean it up.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Backend {
    async fn sqlite() -> (Self, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("clover.db")).await.unwrap();
        (Self::Sqlite(dir), Arc::new(store))
    }

    async fn postgres() -> (Self, Arc<dyn Store>) {
        let database = TestDatabase::create().await;
        let store = PostgresStore::open(&database.url).await.unwrap();
        (Self::Postgres(database), Arc::new(store))
    }

    /// The same database, opened again (migrations run again and must change nothing).
    async fn reopen(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(dir) => Arc::new(SqliteStore::open(&dir.path().join("clover.db")).await.unwrap()),
            Self::Postgres(database) => Arc::new(PostgresStore::open(&database.url).await.unwrap()),
        }
    }
}

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}

fn subject(id: &str) -> SubjectRow {
    SubjectRow {
        subject_id: id.parse().unwrap(),
        home_region: "eu".parse().unwrap(),
        attributes: vec![1, 2, 3, 0, 255],
        metadata: vec![4, 5],
        created_at: at(1_700_000_000),
    }
}

fn record(subject: &str) -> RecordRow {
    RecordRow {
        record_id: RecordId::random(),
        subject_id: subject.parse().unwrap(),
        category: "profile".parse().unwrap(),
        home_region: "eu".parse().unwrap(),
        version: 4_000_000_000,
        ciphertext: (0..=255).collect(),
        created_at: at(1_700_000_001),
        sealed_with: clover_store::SealedWith::RecordKey,
    }
}

fn approval(id: &str, requester: &str, expires_at: i64) -> ApprovalRow {
    ApprovalRow {
        approval_id: id.into(),
        requester: requester.parse().unwrap(),
        subjects: vec!["s-1".parse().unwrap(), "s-2".parse().unwrap()],
        categories: vec!["profile".parse().unwrap()],
        purpose: "support".into(),
        requested_at: at(1_000),
        expires_at: at(expires_at),
        approver: None,
        granted_at: None,
        scope_salt: format!("{:064x}", expires_at),
        grant_index: None,
    }
}

async fn subjects_and_records_round_trip_and_erase_together(store: Arc<dyn Store>, backend: &Backend) {
    assert!(store.insert_subject(&subject("s-1")).await.unwrap());
    assert!(!store.insert_subject(&subject("s-1")).await.unwrap(), "a second registration changes nothing");
    assert!(store.insert_subject(&subject("s-2")).await.unwrap());
    let r1 = record("s-1");
    let r2 = record("s-1");
    store.insert_record(&r1).await.unwrap();
    store.insert_record(&r2).await.unwrap();
    store.insert_record(&record("s-2")).await.unwrap();
    assert_eq!(store.record(&r1.record_id).await.unwrap().unwrap(), r1);
    assert_eq!(store.subject(&"s-1".parse().unwrap()).await.unwrap().unwrap(), subject("s-1"));
    assert_eq!(store.counts().await.unwrap(), Counts { subjects: 2, records: 3 });
    assert!(store.record(&RecordId::random()).await.unwrap().is_none());
    assert!(store.subject(&"nobody".parse().unwrap()).await.unwrap().is_none());

    let erased = store.erase_subject(&"s-1".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((erased.records, erased.annexes), (2, 0));
    // SQLite truncates its write-ahead log before it answers; PostgreSQL leaves its dead rows
    // and WAL segments to VACUUM and recycling.
    assert_eq!(erased.wal_truncated, matches!(backend, Backend::Sqlite(_)));
    assert!(!store.erasure_unfinished(&"s-1".parse().unwrap()));
    assert!(store.record(&r1.record_id).await.unwrap().is_none());
    assert!(store.record(&r2.record_id).await.unwrap().is_none());
    assert!(store.subject(&"s-1".parse().unwrap()).await.unwrap().is_none());
    assert_eq!(store.counts().await.unwrap(), Counts { subjects: 1, records: 1 });
    assert_eq!(store.erase_subject(&"s-1".parse().unwrap()).await.unwrap(), None);
    // The id can be registered again, afresh.
    assert!(store.insert_subject(&subject("s-1")).await.unwrap());
}

async fn a_record_comes_with_its_subject_in_one_call(store: Arc<dyn Store>, _: &Backend) {
    store.insert_subject(&subject("s-1")).await.unwrap();
    let mut other = subject("s-2");
    other.home_region = "no".parse().unwrap();
    other.created_at = at(1_600_000_000);
    store.insert_subject(&other).await.unwrap();
    let r1 = record("s-1");
    let r2 = record("s-2");
    store.insert_record(&r1).await.unwrap();
    store.insert_record(&r2).await.unwrap();
    assert_eq!(store.record_with_subject(&r1.record_id).await.unwrap(), Some((r1.clone(), subject("s-1"))));
    assert_eq!(store.record_with_subject(&r2.record_id).await.unwrap(), Some((r2, other)));
    assert_eq!(store.record_with_subject(&RecordId::random()).await.unwrap(), None);
    store.erase_subject(&"s-1".parse().unwrap()).await.unwrap();
    assert_eq!(store.record_with_subject(&r1.record_id).await.unwrap(), None);
}

async fn a_record_needs_a_registered_subject(store: Arc<dyn Store>, _: &Backend) {
    let err = store.insert_record(&record("ghost")).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchSubject(ref s) if s.as_str() == "ghost"), "{err}");
    assert_eq!(store.counts().await.unwrap(), Counts { subjects: 0, records: 0 });
}

/// Records imported together land together, or not at all.
async fn records_are_imported_in_one_transaction(store: Arc<dyn Store>, _: &Backend) {
    store.insert_subject(&subject("s-1")).await.unwrap();
    let rows: Vec<RecordRow> = (0..50).map(|_| record("s-1")).collect();
    store.insert_records(&rows).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), Counts { subjects: 1, records: 50 });
    for row in &rows {
        let read = store.record(&row.record_id).await.unwrap().unwrap();
        assert_eq!((read.ciphertext, read.subject_id), (row.ciphertext.clone(), row.subject_id.clone()));
    }
    // One row of a missing subject: none of the batch is kept.
    let mut bad: Vec<RecordRow> = (0..5).map(|_| record("s-1")).collect();
    bad.push(record("ghost"));
    let err = store.insert_records(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchSubject(ref s) if s.as_str() == "ghost"), "{err}");
    assert_eq!(store.counts().await.unwrap(), Counts { subjects: 1, records: 50 });
    assert!(store.record(&bad[0].record_id).await.unwrap().is_none());
}

async fn subjects_are_updated_in_place(store: Arc<dyn Store>, _: &Backend) {
    let id = "s-1".parse().unwrap();
    assert!(!store.update_subject(&id, b"a", b"m").await.unwrap(), "no such subject yet");
    store.insert_subject(&subject("s-1")).await.unwrap();
    assert!(store.update_subject(&id, b"new attributes", b"").await.unwrap());
    let row = store.subject(&id).await.unwrap().unwrap();
    assert_eq!(row.attributes, b"new attributes");
    assert!(row.metadata.is_empty());
    assert_eq!(row.created_at, subject("s-1").created_at);
}

async fn one_registration_wins_a_race(store: Arc<dyn Store>, _: &Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.spawn(async move { store.insert_subject(&subject("contended")).await.unwrap() });
    }
    let won = tasks.join_all().await.into_iter().filter(|won| *won).count();
    assert_eq!(won, 1);
}

async fn approvals_are_granted_once_and_expire(store: Arc<dyn Store>, _: &Backend) {
    store.insert_approval(&approval("a-1", "ana", 5_000)).await.unwrap();
    store.insert_approval(&approval("a-2", "ana", 1_500)).await.unwrap();
    store.insert_approval(&approval("a-3", "bo", 5_000)).await.unwrap();
    assert_eq!(store.approval("a-1").await.unwrap().unwrap(), approval("a-1", "ana", 5_000));
    assert!(store.approval("nope").await.unwrap().is_none());

    let kofi = "kofi".parse().unwrap();
    assert!(store.grant_approval("a-1", &kofi, at(2_000), at(9_000), 7).await.unwrap());
    assert!(!store.grant_approval("a-1", &kofi, at(2_001), at(9_001), 8).await.unwrap(), "granted once");
    assert!(!store.grant_approval("a-2", &kofi, at(2_000), at(9_000), 9).await.unwrap(), "the request expired");
    assert!(store.grant_approval("a-3", &kofi, at(2_000), at(3_000), 10).await.unwrap());
    let granted = store.approval("a-1").await.unwrap().unwrap();
    assert_eq!(granted.approver, Some(kofi.clone()));
    assert_eq!((granted.granted_at, granted.expires_at), (Some(at(2_000)), at(9_000)));
    // The grant's log index is kept with it (the first grant's), and the salt of its scope.
    assert_eq!(granted.grant_index, Some(7));
    assert_eq!(granted.scope_salt, approval("a-1", "ana", 5_000).scope_salt);
    assert_eq!(store.approval("a-2").await.unwrap().unwrap().grant_index, None);

    let ana = "ana".parse().unwrap();
    let held: Vec<String> =
        store.granted_approvals(&ana, at(2_500)).await.unwrap().into_iter().map(|a| a.approval_id).collect();
    assert_eq!(held, ["a-1"]);
    assert!(store.granted_approvals(&ana, at(9_000)).await.unwrap().is_empty(), "the grant expired");
    assert_eq!(store.granted_approvals(&"bo".parse().unwrap(), at(2_999)).await.unwrap().len(), 1);
    assert!(store.granted_approvals(&"bo".parse().unwrap(), at(3_000)).await.unwrap().is_empty());
}

async fn reopening_migrates_nothing_and_keeps_everything(store: Arc<dyn Store>, backend: &Backend) {
    store.insert_subject(&subject("s-1")).await.unwrap();
    let r = record("s-1");
    store.insert_record(&r).await.unwrap();
    let again = backend.reopen().await;
    assert_eq!(again.record(&r.record_id).await.unwrap().unwrap(), r);
    assert_eq!(again.counts().await.unwrap(), Counts { subjects: 1, records: 1 });
    assert!(again.legacy_data_keys().await.unwrap().is_empty());
}

async fn times_cover_the_range_in_use(store: Arc<dyn Store>, _: &Backend) {
    let mut row = subject("s-1");
    row.created_at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + Duration::days(365 * 50);
    store.insert_subject(&row).await.unwrap();
    assert_eq!(store.subject(&row.subject_id).await.unwrap().unwrap(), row);
}

async fn annexes_are_found_by_subject_and_unlinked_by_erasure(store: Arc<dyn Store>, _: &Backend) {
    use clover_event::{Annex, AnnexField};
    assert!(store.insert_subject(&subject("s-1")).await.unwrap());
    assert!(store.insert_subject(&subject("s-2")).await.unwrap());
    let annex = |subject: Option<&str>, record: &str| {
        Annex::new(Some("ana"), Some("SUP-1"), None, Some(record), subject).unwrap()
    };
    let first = annex(Some("s-1"), "r-1");
    // An access decided under an approval names it.
    let second = annex(Some("s-1"), "r-2").with_approval(Some("a-1"));
    let other = annex(Some("s-2"), "r-3");
    let about_none = annex(None, "r-4");
    for a in [&first, &second, &other, &about_none] {
        store.insert_annex(a).await.unwrap();
    }
    // One commitment, one annex.
    assert!(store.insert_annex(&first).await.is_err());
    let s1: SubjectId = "s-1".parse().unwrap();
    assert_eq!(store.annexes_of(&s1).await.unwrap(), vec![first.clone(), second.clone()], "oldest first");
    assert_eq!(store.annex(&other.commitment()).await.unwrap(), Some(other.clone()));
    assert_eq!(store.annex(&"0".repeat(64)).await.unwrap(), None);

    let erased = store.erase_subject(&s1).await.unwrap().unwrap();
    assert_eq!(erased.annexes, 2);
    assert!(store.annexes_of(&s1).await.unwrap().is_empty(), "nothing leads from the subject to their entries");
    let kept = store.annex(&first.commitment()).await.unwrap().unwrap();
    assert_eq!(kept.commitment(), first.commitment(), "the annex still matches its entry");
    assert!(matches!(kept.subject, AnnexField::Unlinked(_)) && matches!(kept.record, AnnexField::Unlinked(_)));
    assert_eq!(kept.principal.as_deref(), Some("ana"), "who asked is kept");
    // The approval's row names the subjects it covers: its id is unlinked too.
    let kept = store.annex(&second.commitment()).await.unwrap().unwrap();
    assert_eq!(kept.commitment(), second.commitment());
    assert!(matches!(kept.approval, Some(AnnexField::Unlinked(_))), "{kept:?}");
    let text = String::from_utf8(kept.encode()).unwrap();
    assert!(!text.contains("s-1") && !text.contains("r-1"), "{text}");
    // The other subject's annexes are untouched; a new registration of the id finds nothing.
    assert_eq!(store.annexes_of(&"s-2".parse().unwrap()).await.unwrap(), vec![other]);
    assert!(store.insert_subject(&subject("s-1")).await.unwrap());
    assert!(store.annexes_of(&s1).await.unwrap().is_empty());
}

async fn reads_are_counted_per_principal_in_the_window(store: Arc<dyn Store>, _: &Backend) {
    let (ana, bo) = ("ana".parse().unwrap(), "bo".parse().unwrap());
    let since = at(1_000);
    assert_eq!(store.touched(&ana, "h1", since).await.unwrap(), 1, "the subject asked about counts");
    store.record_touch(&ana, "h1", at(1_100), since).await.unwrap();
    store.record_touch(&ana, "h1", at(1_200), since).await.unwrap();
    store.record_touch(&ana, "h2", at(1_300), since).await.unwrap();
    assert_eq!(store.touched(&ana, "h1", since).await.unwrap(), 2);
    assert_eq!(store.touched(&ana, "h3", since).await.unwrap(), 3);
    assert_eq!(store.touched(&bo, "h1", since).await.unwrap(), 1, "per principal");
    // Reads before the window do not count, and are forgotten at the next read.
    assert_eq!(store.touched(&ana, "h3", at(1_250)).await.unwrap(), 2);
    store.record_touch(&ana, "h4", at(2_000), at(1_250)).await.unwrap();
    assert_eq!(store.touched(&ana, "h1", since).await.unwrap(), 3, "h1's reads were forgotten: h2, h4 and h1");

    // Many reads in one transaction (the gateway's group commit): each counted, and each
    // principal's window moved to the earliest start the batch gives it.
    let touch = |principal: &clover_model::PrincipalId, subject: &str, when: i64, since: i64| clover_store::Touch {
        principal: principal.clone(),
        subject: subject.to_owned(),
        at: at(when),
        since: at(since),
    };
    store
        .record_touches(&[
            touch(&bo, "h1", 2_100, 1_500),
            touch(&ana, "h5", 2_100, 1_400),
            touch(&bo, "h2", 2_110, 1_000),
            touch(&ana, "h6", 2_120, 1_350),
            // The same principal and subject twice in one batch: one row, the latest read.
            touch(&bo, "h1", 2_105, 1_500),
            touch(&bo, "h1", 2_101, 1_500),
        ])
        .await
        .unwrap();
    assert_eq!(store.touched(&bo, "h9", since).await.unwrap(), 3, "bo: h1, h2 and h9");
    // bo's h1 is kept at its latest read, 2_105: in a window from 2_105 (h1, h2), not from 2_106 (h2).
    assert_eq!(store.touched(&bo, "h9", at(2_105)).await.unwrap(), 3);
    assert_eq!(store.touched(&bo, "h9", at(2_106)).await.unwrap(), 2);
    // ana's reads before 1_350 forgotten (h2 at 1_300), not those after (h4, h5, h6).
    assert_eq!(store.touched(&ana, "h4", since).await.unwrap(), 3, "ana: h4, h5, h6");
    store.record_touches(&[]).await.unwrap();
}

/// A repatriation job's rows: each source row kept once (a resumed run writes nothing twice),
/// read back in source order by pages, per job; and gone with their record when the subject
/// is erased (the source key may itself identify them).
async fn repatriated_rows_are_kept_once_and_go_with_their_record(store: Arc<dyn Store>, _: &Backend) {
    use clover_store::RepatriatedRow;
    store.insert_subject(&subject("s-1")).await.unwrap();
    store.insert_subject(&subject("s-2")).await.unwrap();
    let mut rows = Vec::new();
    // Keys whose byte order differs from a locale's ("B" < "a" < "b"), and one of s-2's.
    for (key, owner) in [("b", "s-1"), ("B", "s-1"), ("a", "s-1"), ("10", "s-1"), ("9", "s-2")] {
        let r = record(owner);
        store.insert_record(&r).await.unwrap();
        let row = RepatriatedRow {
            job: "job-1".into(),
            source_key: key.into(),
            record_id: r.record_id,
            digest: format!("{key:0>64}"),
            log_index: 40 + rows.len() as u64,
            // Source order: "b" and "B" share a place (rows kept before version 7 all have 0).
            ordinal: [3, 3, 1, 0, 2][rows.len()],
        };
        assert!(store.record_repatriated(&row).await.unwrap());
        rows.push(row);
    }
    // Again, or another record for the same source row: kept as it was.
    assert!(!store.record_repatriated(&rows[0]).await.unwrap());
    let mut other = rows[0].clone();
    other.digest = "f".repeat(64);
    assert!(!store.record_repatriated(&other).await.unwrap());
    assert_eq!(store.repatriated("job-1", "b").await.unwrap().unwrap(), rows[0]);
    assert!(store.repatriated("job-1", "c").await.unwrap().is_none());
    assert!(store.repatriated("job-2", "b").await.unwrap().is_none());

    // Pages in source order: by ordinal, then in byte order of the source key.
    let first = store.repatriated_by("job-1", None, 3).await.unwrap();
    let keys: Vec<&str> = first.iter().map(|r| r.source_key.as_str()).collect();
    assert_eq!(keys, ["10", "a", "9"]);
    let rest = store.repatriated_by("job-1", Some((2, "9")), 3).await.unwrap();
    let keys: Vec<&str> = rest.iter().map(|r| r.source_key.as_str()).collect();
    assert_eq!(keys, ["B", "b"]);
    assert!(store.repatriated_by("job-2", None, 3).await.unwrap().is_empty());
    // A row's record must be stored.
    let ghost = RepatriatedRow { source_key: "ghost".into(), record_id: RecordId::random(), ..rows[0].clone() };
    assert!(store.record_repatriated(&ghost).await.is_err());

    // Erasing s-1 takes its rows with its records; s-2's stays.
    store.erase_subject(&"s-1".parse().unwrap()).await.unwrap().unwrap();
    let left = store.repatriated_by("job-1", None, 10).await.unwrap();
    assert_eq!(left, vec![rows[4].clone()]);
}

/// Records a repatriation brings home are stored with their rows, in one transaction: a source
/// row the job brought home already stores nothing (its record is not stored twice), and a
/// batch that fails stores nothing of it at all.
async fn repatriated_records_are_stored_with_their_rows_or_not_at_all(store: Arc<dyn Store>, _: &Backend) {
    use clover_store::RepatriatedRow;
    store.insert_subject(&subject("s-1")).await.unwrap();
    let pair = |key: &str, owner: &str, ordinal: u64| {
        let r = record(owner);
        let row = RepatriatedRow {
            job: "job-1".into(),
            source_key: key.into(),
            record_id: r.record_id,
            digest: "d".repeat(64),
            log_index: 7,
            ordinal,
        };
        (r, row)
    };
    let batch = vec![pair("k1", "s-1", 0), pair("k2", "s-1", 1)];
    assert_eq!(store.insert_repatriated(&batch).await.unwrap(), [true, true]);
    assert_eq!(store.counts().await.unwrap().records, 2);
    assert_eq!(store.repatriated("job-1", "k2").await.unwrap().unwrap(), batch[1].1);
    assert!(store.record(&batch[0].0.record_id).await.unwrap().is_some());

    // Again (a resumed run), with new record ids: only the new row is stored.
    let again = vec![pair("k1", "s-1", 0), pair("k3", "s-1", 2)];
    assert_eq!(store.insert_repatriated(&again).await.unwrap(), [false, true]);
    assert!(store.record(&again[0].0.record_id).await.unwrap().is_none());
    assert_eq!(store.repatriated("job-1", "k1").await.unwrap().unwrap(), batch[0].1);
    assert_eq!(store.counts().await.unwrap().records, 3);

    // A batch with a record of no registered subject fails whole: k4 is not stored either.
    let failing = vec![pair("k4", "s-1", 3), pair("k5", "s-404", 4)];
    assert!(store.insert_repatriated(&failing).await.is_err());
    assert!(store.repatriated("job-1", "k4").await.unwrap().is_none());
    assert!(store.record(&failing[0].0.record_id).await.unwrap().is_none());
    assert_eq!(store.counts().await.unwrap().records, 3);
}

/// Many entries' annexes kept in one transaction: each found by its commitment and subject.
async fn annexes_are_kept_many_at_a_time(store: Arc<dyn Store>, _: &Backend) {
    let subject: SubjectId = "s-9".parse().unwrap();
    let annexes: Vec<clover_event::Annex> = (0..3)
        .map(|i| {
            clover_event::Annex::new(Some("ana"), None, None, Some(&format!("r-{i}")), Some(subject.as_str())).unwrap()
        })
        .collect();
    store.insert_annexes(&annexes).await.unwrap();
    for annex in &annexes {
        assert_eq!(store.annex(&annex.commitment()).await.unwrap().as_ref(), Some(annex));
    }
    assert_eq!(store.annexes_of(&subject).await.unwrap(), annexes);
    // Paged: two, then the one after them, then none.
    let first = store.annexes_of_page(&subject, 0, 2).await.unwrap();
    assert_eq!(first.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), annexes[..2]);
    let rest = store.annexes_of_page(&subject, first[1].0, 2).await.unwrap();
    assert_eq!(rest.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), annexes[2..]);
    assert!(store.annexes_of_page(&subject, rest[0].0, 2).await.unwrap().is_empty());
    store.insert_annexes(&[]).await.unwrap();

    // Annexes and the reads among them counted, in one transaction: both kept, or (a commitment
    // kept already) neither.
    let ana: clover_model::PrincipalId = "ana".parse().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let touch = |subject: &str| clover_store::Touch {
        principal: ana.clone(),
        subject: subject.to_owned(),
        at: now,
        since: now - time::Duration::hours(1),
    };
    let more = clover_event::Annex::new(Some("ana"), None, None, Some("r-9"), Some(subject.as_str())).unwrap();
    store.insert_accesses(std::slice::from_ref(&more), &[touch("h-a")]).await.unwrap();
    assert_eq!(store.annex(&more.commitment()).await.unwrap(), Some(more.clone()));
    assert_eq!(store.touched(&ana, "h-b", now - time::Duration::hours(1)).await.unwrap(), 2, "h-a counted, and h-b");
    assert!(store.insert_accesses(&[more], &[touch("h-c")]).await.is_err(), "the same annex twice");
    assert_eq!(store.touched(&ana, "h-b", now - time::Duration::hours(1)).await.unwrap(), 2, "h-c not counted");
}

/// Many subjects registered in one transaction; one registered before is left as it was.
async fn subjects_are_registered_many_at_a_time(store: Arc<dyn Store>, _: &Backend) {
    assert!(store.insert_subject(&subject("s-2")).await.unwrap());
    let rows = vec![subject("s-1"), subject("s-2"), subject("s-3")];
    assert_eq!(store.insert_subjects(&rows).await.unwrap(), [true, false, true]);
    assert_eq!(store.counts().await.unwrap().subjects, 3);
    assert!(store.insert_subjects(&[]).await.unwrap().is_empty());
}

/// A transfer pages through the records of its categories and time range, by subject and then
/// record id (a subject's records together), each with its subject; another category, or a time
/// outside the range, is not selected.
async fn transfers_page_their_records_and_are_streamed_once(store: Arc<dyn Store>, _: &Backend) {
    let mut wanted = Vec::new();
    // Subjects inserted out of order, each record with a random id: the pages still come by
    // subject, then record id.
    for id in ["s-2", "s-1"] {
        store.insert_subject(&subject(id)).await.unwrap();
        for n in 0..5 {
            let mut row = record(id);
            row.created_at = at(1_700_000_000 + n);
            store.insert_record(&row).await.unwrap();
            if (1..4).contains(&n) {
                wanted.push((id.to_owned(), row.record_id.to_string()));
            }
        }
        let mut other = record(id);
        other.category = "content".parse().unwrap();
        store.insert_record(&other).await.unwrap();
    }
    wanted.sort();
    let selection = TransferSelection {
        categories: vec!["profile".parse().unwrap()],
        since: Some(at(1_700_000_001)),
        until: Some(at(1_700_000_004)),
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        // Pages of two: a subject's records are split across pages.
        let page = store.records_for_transfer(&selection, after.as_ref(), None, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        for (record, metadata) in &page {
            assert_eq!(metadata, &vec![4, 5], "the subject's metadata comes with each record");
            assert!((1_700_000_001..1_700_000_004).contains(&record.created_at.unix_timestamp()));
            seen.push((record.subject_id.to_string(), record.record_id.to_string()));
        }
        after = page.last().map(|(r, _)| TransferCursor::after(r));
    }
    assert_eq!(seen, wanted, "every record selected once, by subject and then record id");
    // Read in runs side by side, cut where subject_splits says: the same records, each once.
    assert!(store.subject_splits(1).await.unwrap().is_empty());
    let splits = store.subject_splits(2).await.unwrap();
    assert_eq!(splits, vec!["s-2".parse::<SubjectId>().unwrap()]);
    assert_eq!(store.subject_splits(8).await.unwrap(), splits, "no run without a subject of its own");
    let ids = |page: Vec<(RecordRow, Vec<u8>)>| -> Vec<(String, String)> {
        page.iter().map(|(r, _)| (r.subject_id.to_string(), r.record_id.to_string())).collect()
    };
    let first = store.records_for_transfer(&selection, None, splits.first(), 100).await.unwrap();
    let from = TransferCursor::before(&splits[0]);
    let second = store.records_for_transfer(&selection, Some(&from), None, 100).await.unwrap();
    let mut both = ids(first);
    assert!(both.iter().all(|(subject, _)| subject == "s-1"));
    both.extend(ids(second));
    assert_eq!(both, wanted);
    let all = TransferSelection {
        categories: vec!["profile".parse().unwrap(), "content".parse().unwrap()],
        since: None,
        until: None,
    };
    assert_eq!(store.records_for_transfer(&all, None, None, 100).await.unwrap().len(), 12);

    let row = TransferRow {
        transfer_id: "t-1".into(),
        principal: "ana".into(),
        manifest: "manifest\n".into(),
        state: "ready".into(),
        sent: 0,
        sha256: None,
        log_index: 7,
        created_at: at(1_700_000_000),
        classes: vec![7; 64],
    };
    store.insert_transfer(&row).await.unwrap();
    assert_eq!(store.transfer("t-1").await.unwrap(), Some(row.clone()));
    assert_eq!(store.transfer("t-2").await.unwrap(), None);
    assert!(store.insert_transfer(&row).await.is_err(), "an id is kept once");
    assert!(store.set_transfer_state("t-1", "ready", "streaming", 0, None).await.unwrap());
    assert!(!store.set_transfer_state("t-1", "ready", "streaming", 0, None).await.unwrap(), "streamed once");
    assert!(store.set_transfer_state("t-1", "streaming", "sent", 3, Some("ab")).await.unwrap());
    let done = store.transfer("t-1").await.unwrap().unwrap();
    assert_eq!((done.state.as_str(), done.sent, done.sha256.as_deref()), ("sent", 3, Some("ab")));
}

/// A privacy budget is spent atomically and never past its limit, also by spends at once.
async fn privacy_budgets_are_spent_within_their_limits(store: Arc<dyn Store>, _: &Backend) {
    let limit = (1.0, 1e-6);
    assert_eq!(store.budget_spent("us", "analytics").await.unwrap(), (0.0, 0.0));
    assert_eq!(store.spend_budget("us", "analytics", (0.25, 0.0), limit).await.unwrap(), Some((0.25, 0.0)));
    assert_eq!(store.spend_budget("us", "analytics", (0.8, 0.0), limit).await.unwrap(), None);
    assert_eq!(store.spend_budget("us", "analytics", (0.1, 2e-6), limit).await.unwrap(), None);
    assert_eq!(store.spend_budget("us", "analytics", (-1.0, 0.0), limit).await.unwrap(), None);
    assert_eq!(store.budget_spent("us", "analytics").await.unwrap(), (0.25, 0.0));
    assert_eq!(store.budget_spent("us", "safety").await.unwrap(), (0.0, 0.0));
    // Ten spends of 0.1 at once against what is left (0.75): seven fit, three do not.
    let spends = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.spend_budget("us", "analytics", (0.1, 0.0), limit).await.unwrap() })
    });
    let mut fitted = 0;
    for spend in spends {
        if spend.await.unwrap().is_some() {
            fitted += 1;
        }
    }
    assert_eq!(fitted, 7);
    let (epsilon, _) = store.budget_spent("us", "analytics").await.unwrap();
    assert!((epsilon - 0.95).abs() < 1e-9, "{epsilon}");
}

async fn government_requests_move_once_and_holds_are_released_by_reference(store: Arc<dyn Store>, _: &Backend) {
    let row = GovernmentRequestRow {
        request_id: "gr-1".to_owned(),
        state: "received".to_owned(),
        details: r#"{"country":"de"}"#.to_owned(),
        received_at: at(1_790_000_000),
        updated_at: at(1_790_000_000),
        log_index: 7,
    };
    store.insert_government_request(&row).await.unwrap();
    assert!(store.insert_government_request(&row).await.is_err(), "an id is registered once");
    assert_eq!(store.government_request("gr-1").await.unwrap(), Some(row.clone()));
    assert_eq!(store.government_request("gr-2").await.unwrap(), None);
    let moved = GovernmentRequestRow {
        state: "granted".to_owned(),
        details: r#"{"country":"de","outcome":"granted"}"#.to_owned(),
        updated_at: at(1_790_000_100),
        log_index: 9,
        ..row.clone()
    };
    assert!(store.update_government_request(&moved, 7).await.unwrap());
    // A second move made from the same state (its last entry 7) does not land.
    let other = GovernmentRequestRow { state: "rejected".to_owned(), log_index: 10, ..row.clone() };
    assert!(!store.update_government_request(&other, 7).await.unwrap());
    assert_eq!(store.government_requests().await.unwrap(), vec![moved]);

    store.place_legal_hold("h-a", "gr-1").await.unwrap();
    store.place_legal_hold("h-b", "gr-1").await.unwrap();
    store.place_legal_hold("h-b", "gr-9").await.unwrap();
    assert_eq!(store.legal_hold("h-a").await.unwrap().as_deref(), Some("gr-1"));
    assert_eq!(store.release_legal_holds("gr-1").await.unwrap(), 2);
    assert_eq!(store.legal_hold("h-a").await.unwrap(), None);
    assert_eq!(store.legal_hold("h-b").await.unwrap().as_deref(), Some("gr-9"), "another order's hold stays");
    assert_eq!(store.release_legal_holds("gr-1").await.unwrap(), 0);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (backend, store) = super::Backend::sqlite().await;
                    super::$name(store, &backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let (backend, store) = super::Backend::postgres().await;
                    super::$name(store, &backend).await;
                }
            )*
        }
    };
}

suite!(
    subjects_and_records_round_trip_and_erase_together,
    a_record_comes_with_its_subject_in_one_call,
    a_record_needs_a_registered_subject,
    records_are_imported_in_one_transaction,
    subjects_are_updated_in_place,
    one_registration_wins_a_race,
    approvals_are_granted_once_and_expire,
    reopening_migrates_nothing_and_keeps_everything,
    times_cover_the_range_in_use,
    annexes_are_found_by_subject_and_unlinked_by_erasure,
    reads_are_counted_per_principal_in_the_window,
    repatriated_rows_are_kept_once_and_go_with_their_record,
    repatriated_records_are_stored_with_their_rows_or_not_at_all,
    annexes_are_kept_many_at_a_time,
    subjects_are_registered_many_at_a_time,
    transfers_page_their_records_and_are_streamed_once,
    privacy_budgets_are_spent_within_their_limits,
    government_requests_move_once_and_holds_are_released_by_reference,
);
