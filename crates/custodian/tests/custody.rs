//! The custodian's behaviour, one suite run unchanged against both KEK backends: the local
//! keyring, and PKCS#11 on a real SoftHSM2 token made for each test; and against both key
//! stores: SQLite files, and a PostgreSQL database made for each test (with the keyring).
//!
//! SoftHSM2 reads its configuration (where its tokens are) from `SOFTHSM2_CONF` when the module
//! is initialised, and only from the environment. The workspace forbids `unsafe` code, so a test
//! cannot set that variable in its own process (`std::env::set_var` is unsafe in edition 2024):
//! each PKCS#11 test writes a configuration with a token directory of its own in a temporary
//! directory, runs itself again in a child process with `SOFTHSM2_CONF` set, and passes if the
//! child's run of that one test passed. The child makes a fresh token and runs the suite on it.
//! Without SoftHSM2 the PKCS#11 tests fail (they do not skip): `apt-get install softhsm2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use clover_custodian::{CacheOptions, Custodian, KeyStore, METADATA_KEY, PSEUDONYMS_PER_RECEIPT};
use clover_event::{Event, EventDecision, EventKind, EventOrigin, SubjectIndexKey};
use clover_keys::pkcs11::{Pkcs11Config, Pkcs11Kek};
use clover_keys::{Kek, KeyCustody, KeyError, Keyring, Passphrase, PseudonymRoot, aad};
use clover_log::{Log, LogOptions, Receipt};
use clover_model::{Action, PrincipalKind, RecordId, Region, SubjectId};
use clover_policy::Verdict;
use clover_policy::pack::{PackDestination, PackPrincipal, PackRequest, PackResource, PolicyPack};
use clover_tlog::note::{SigningKey, TYPE_ED25519};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

/// Where SoftHSM2 is unless `CLOVER_TEST_PKCS11_MODULE` says otherwise (Debian and Ubuntu's
/// `softhsm2` package).
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Set in the child process that runs a PKCS#11 test against its own SoftHSM2 configuration.
const CHILD: &str = "CLOVER_TEST_SOFTHSM_CHILD";
const MODULE_ENV: &str = "CLOVER_TEST_PKCS11_MODULE";
const SO_PIN: &str = "so-pin-1234";
const USER_PIN: &str = "1234";
const REGION: &str = "eu";

/// The cache off.
const NO_CACHE: CacheOptions = CacheOptions { size: 0, ttl: Duration::from_secs(60) };

fn region() -> Region {
    REGION.parse().unwrap()
}

fn subject(id: &str) -> SubjectId {
    id.parse().unwrap()
}

enum Backend {
    Keyring { path: PathBuf },
    Pkcs11 { config: Pkcs11Config },
}

/// Where a custodian under test keeps its keys.
enum StoreAt {
    File(PathBuf),
    Postgres(clover_testkit::TestDatabase),
}

impl StoreAt {
    fn key_store(&self) -> KeyStore {
        match self {
            Self::File(path) => KeyStore::Sqlite(path.clone()),
            Self::Postgres(database) => KeyStore::Postgres(database.url.clone()),
        }
    }
}

/// One backend's KEK, a real log to get receipts from, and a directory for key stores.
struct Fixture {
    dir: tempfile::TempDir,
    backend: Backend,
    /// Key stores in PostgreSQL rather than SQLite files.
    postgres: bool,
    kek: Arc<dyn Kek>,
    /// The key of the log's subject hashes.
    root: Vec<u8>,
    /// The pseudonyms' root, a secret of its own.
    pseudonym_secret: Vec<u8>,
    log: Log,
    stores: AtomicU32,
}

fn random_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
}

impl Fixture {
    fn new(dir: tempfile::TempDir, backend: Backend, kek: Arc<dyn Kek>) -> Self {
        let signer = SigningKey::generate("clover.test", TYPE_ED25519).unwrap();
        let log = Log::open(&dir.path().join("log"), signer, LogOptions::default()).unwrap();
        Self {
            dir,
            backend,
            postgres: false,
            kek,
            root: random_bytes(),
            pseudonym_secret: random_bytes(),
            log,
            stores: AtomicU32::new(0),
        }
    }

    /// The local keyring, with Argon2id at its cheapest.
    fn keyring() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = Keyring::create_with(&path, region(), &Passphrase::new("pw"), (8, 1, 1)).unwrap();
        Self::new(dir, Backend::Keyring { path }, Arc::new(keyring))
    }

    /// The keyring, with its key stores in PostgreSQL.
    fn keyring_on_postgres() -> Self {
        Self { postgres: true, ..Self::keyring() }
    }

    /// A fresh SoftHSM2 token, in the child process; in the parent, runs the test `name` in a
    /// child and returns `None` once it passed.
    fn softhsm(name: &str) -> Option<Self> {
        if std::env::var_os(CHILD).is_none() {
            run_in_softhsm_child(name);
            return None;
        }
        let module_path = PathBuf::from(std::env::var_os(MODULE_ENV).unwrap());
        let token_label = new_token(&module_path);
        let config = Pkcs11Config { module: module_path, token_label };
        let kek = Pkcs11Kek::open(&config, region(), AuthPin::new(USER_PIN.into())).unwrap();
        Some(Self::new(tempfile::tempdir().unwrap(), Backend::Pkcs11 { config }, Arc::new(kek)))
    }

    fn index(&self) -> SubjectIndexKey {
        SubjectIndexKey::new(&self.root)
    }

    fn hash(&self, id: &str) -> String {
        self.index().hash(&subject(id))
    }

    /// A new key store.
    async fn new_store(&self) -> StoreAt {
        if self.postgres {
            return StoreAt::Postgres(clover_testkit::TestDatabase::create().await);
        }
        StoreAt::File(self.dir.path().join(format!("custody-{}.db", self.stores.fetch_add(1, Ordering::Relaxed))))
    }

    /// A custodian over a new key store.
    async fn custodian(&self, cache: CacheOptions) -> (Custodian, StoreAt) {
        let store = self.new_store().await;
        (self.custodian_at(&store, self.kek.clone(), cache).await, store)
    }

    async fn custodian_at(&self, store: &StoreAt, kek: Arc<dyn Kek>, cache: CacheOptions) -> Custodian {
        Custodian::open(&store.key_store(), region(), kek, self.index(), self.pseudonym_root(), cache).await.unwrap()
    }

    /// The pseudonyms' root.
    fn pseudonym_root(&self) -> PseudonymRoot {
        PseudonymRoot::new(1, &self.pseudonym_secret)
    }

    /// The backend opened again from where it keeps its keys.
    fn reopen_kek(&self) -> Arc<dyn Kek> {
        match &self.backend {
            Backend::Keyring { path } => Arc::new(Keyring::open_for(path, &region(), &Passphrase::new("pw")).unwrap()),
            Backend::Pkcs11 { config } => {
                Arc::new(Pkcs11Kek::open(config, region(), AuthPin::new(USER_PIN.into())).unwrap())
            }
        }
    }

    /// A receipt for an allowed `action` on `id`'s data, appended to the real log (a read in
    /// full view, as the default pack grants in the region).
    async fn receipt(&self, action: Action, id: &str) -> Receipt {
        self.receipt_with_view(action, id, (action == Action::Read).then_some("full")).await
    }

    /// [`Fixture::receipt`] whose entry's decision names `view`.
    async fn receipt_with_view(&self, action: Action, id: &str, view: Option<&str>) -> Receipt {
        let (kind, purpose) = match action {
            Action::Read => (EventKind::Access, Some("support".to_owned())),
            Action::Write | Action::Repatriate => (EventKind::Write, None),
            Action::Erase => (EventKind::Erasure, None),
            _ => (EventKind::Access, None),
        };
        // The custodian in this process takes the subject from the receipt's permit; the tag is
        // what a custodian in its own process checks. A read or write names the record version
        // it is for in its annex (always the same one here, `RECORD`), as the boundary's do.
        let annex = (action != Action::Erase).then(|| {
            clover_event::Annex::new(Some("ana"), None, None, Some(RECORD), Some(id)).unwrap().with_version(Some(1))
        });
        let event = Event {
            v: clover_event::EVENT_VERSION,
            kind,
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            principal: None,
            origin: None,
            action: Some(action.to_string()),
            subject: Some(clover_event::SubjectTag::random().unwrap()),
            category: Some("profile".into()),
            decision: Some(clover_event::EventDecision {
                effect: "allow".into(),
                view: view.map(str::to_owned),
                policies: Vec::new(),
            }),
            purpose: purpose.clone(),
            annex: annex.as_ref().map(clover_event::Annex::commitment),
            detail: None,
            transfer: None,
            government_request: None,
        };
        let mut receipt = self.log.append_permitted(&event, permit(action, id, purpose)).await.unwrap();
        if let Some(annex) = annex {
            receipt = receipt.with_annex(annex);
        }
        assert_eq!(receipt.permit().action(), action);
        receipt
    }

    /// A receipt for a read of `id`'s record from Virginia by a US employee for `purpose` (a
    /// transfer purpose), which the default pack grants a pseudonymised view.
    async fn pseudonymised_read(&self, id: &str, purpose: &str) -> Receipt {
        let annex =
            clover_event::Annex::new(Some("ana"), None, None, Some(RECORD), Some(id)).unwrap().with_version(Some(1));
        let event = Event {
            v: clover_event::EVENT_VERSION,
            kind: EventKind::Access,
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            principal: None,
            origin: Some(EventOrigin { site: Some("virginia-1".into()), region: Some("us".into()) }),
            action: Some("read".into()),
            subject: Some(clover_event::SubjectTag::random().unwrap()),
            category: Some("profile".into()),
            decision: Some(EventDecision {
                effect: "allow".into(),
                view: Some("pseudonymised".into()),
                policies: vec!["pseudonymised-from-outside".into()],
            }),
            purpose: Some(purpose.into()),
            annex: Some(annex.commitment()),
            detail: None,
            transfer: None,
            government_request: None,
        };
        let permit = permit_from(Action::Read, id, Some(purpose.to_owned()), Some(("virginia-1", "us")));
        let receipt = self.log.append_permitted(&event, permit).await.unwrap().with_annex(annex);
        assert_eq!(receipt.permit().view(), clover_model::View::Pseudonymised);
        receipt
    }
}

/// A permit from the default policy pack: an EU employee at an EU site.
fn permit(action: Action, id: &str, purpose: Option<String>) -> clover_policy::Permit {
    permit_from(action, id, purpose, None)
}

/// A permit from the default policy pack: an EU employee at an EU site, or an employee of the
/// region of `outside` (a site and its region) at that site, for a transfer purpose.
fn permit_from(
    action: Action,
    id: &str,
    purpose: Option<String>,
    outside: Option<(&str, &str)>,
) -> clover_policy::Permit {
    let resource = match action {
        Action::Read | Action::Write | Action::Repatriate => PackResource::Record {
            id: RecordId::random().to_string(),
            category: "profile".into(),
            sensitive: false,
            subject_minor: false,
            home_region: REGION.into(),
        },
        _ => PackResource::Subject { id: id.into(), minor: false, home_region: REGION.into() },
    };
    let (site, site_region) = outside.unwrap_or(("dublin-1", REGION));
    let request = PackRequest {
        boundary_region: REGION.into(),
        principal: PackPrincipal {
            kind: PrincipalKind::Employee,
            id: "ana".into(),
            home_region: site_region.into(),
            site: site.into(),
            roles: vec![if action == Action::Repatriate { "repatriation" } else { "agent" }.into()],
        },
        action,
        resource,
        origin: Some((site.into(), site_region.into())),
        purpose_declared: purpose.is_some(),
        purpose_allowed_for_category: purpose.is_some(),
        purpose_role_ok: purpose.is_some(),
        purpose,
        purpose_allows_transfer: outside.is_some(),
        category_role_ok: false,
        has_justification: false,
        approved: false,
        subjects_touched: 1,
        bulk_threshold: 50,
        // A read from outside is a transfer: to a destination there with a legal basis.
        destination: outside.map(|(_, region)| PackDestination {
            region: region.into(),
            legal_basis: "scc".into(),
            purpose_allowed: true,
        }),
    };
    match PolicyPack::default_pack().unwrap().verdict(&request, &subject(id)) {
        Verdict::Allowed(permit) => permit,
        Verdict::Denied(d) => panic!("the default pack refused {action}: {d:?}"),
    }
}

/// The record every read and write receipt here is for.
const RECORD: &str = "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b";

/// The key of `RECORD` version 1 (a profile), derived from the subject's key `raw` as the
/// custodian derives it: what the receipts here are given.
fn record_key(raw: &[u8], hash: &str) -> Vec<u8> {
    let subject_key = clover_keys::DataKey::from_slice(raw).unwrap();
    let scope = aad::key_scope(&region(), hash, Some(RECORD), Some(1), Some("profile"));
    subject_key.derive(&scope).unwrap().expose().to_vec()
}

/// The associated data of a record's fields, as the boundary binds them.
fn record_aad(id: &str) -> Vec<u8> {
    aad::record(&region(), &subject(id), &RECORD.parse().unwrap(), 1)
}

/// Every byte of a key store: the database, its WAL and shared memory; in PostgreSQL, every
/// value the database answers with (its files are the server's: a dead row version stays in
/// them until `VACUUM`, which is why erased keys are shredded by retiring their KEK version).
async fn store_bytes(store: &StoreAt) -> Vec<u8> {
    let path = match store {
        StoreAt::File(path) => path,
        StoreAt::Postgres(database) => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            let mut bytes = Vec::new();
            for query in [
                "SELECT convert_to(subject, 'UTF8') || wrapped FROM data_keys",
                "SELECT convert_to(subject, 'UTF8') || salt FROM metadata_salts",
                "SELECT convert_to(subject, 'UTF8') FROM erasures",
                "SELECT convert_to(subject || action || entry_hash || coalesce(purpose, ''), 'UTF8') FROM unwraps",
            ] {
                for value in sqlx::query_scalar::<_, Vec<u8>>(query).fetch_all(&pool).await.unwrap() {
                    bytes.extend(value);
                }
            }
            pool.close().await;
            return bytes;
        }
    };
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(b) = std::fs::read(&file) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A subject's wrapped data key, read from the key store behind the custodian's back.
async fn wrapped_row(store: &StoreAt, hash: &str) -> Option<(u32, Vec<u8>)> {
    const QUERY: &str = "SELECT kek_version, wrapped FROM data_keys WHERE subject = $1";
    let row: Option<(i64, Vec<u8>)> = match store {
        StoreAt::File(path) => {
            let pool =
                SqlitePool::connect_with(SqliteConnectOptions::new().filename(path).read_only(true)).await.unwrap();
            let row = sqlx::query_as(QUERY).bind(hash).fetch_optional(&pool).await.unwrap();
            pool.close().await;
            row
        }
        StoreAt::Postgres(database) => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            let row = sqlx::query_as(QUERY).bind(hash).fetch_optional(&pool).await.unwrap();
            pool.close().await;
            row
        }
    };
    row.map(|(version, wrapped)| (u32::try_from(version).unwrap(), wrapped))
}

/// Runs `sql` with a blob and a text parameter on the key store, behind the custodian's back.
async fn tamper(store: &StoreAt, sql: &'static str, blob: &[u8], text: &str) {
    match store {
        StoreAt::File(path) => {
            let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await.unwrap();
            sqlx::query(sql).bind(blob).bind(text).execute(&pool).await.unwrap();
            pool.close().await;
        }
        StoreAt::Postgres(database) => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            sqlx::query(sql).bind(blob).bind(text).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Runs `sql` with no parameter on the key store, behind the custodian's back.
async fn tamper_sql(store: &StoreAt, sql: &'static str) {
    match store {
        StoreAt::File(path) => {
            let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        StoreAt::Postgres(database) => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Opens what [`clover_keys::DataKey::seal`] sealed, with raw key bytes.
fn open_with_raw(key: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let mut in_out = ciphertext.to_vec();
    let len = key.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::from(aad), &mut in_out).ok()?.len();
    in_out.truncate(len);
    Some(in_out)
}

// ---------------------------------------------------------------------------------------------
// The suite: each function runs against both backends (see `suite!` at the bottom).
// ---------------------------------------------------------------------------------------------

/// A data key made for a logged write opens, later, with a logged read; a second one for the
/// same subject is refused and does not replace the first.
async fn a_data_key_made_for_a_write_opens_on_a_read(f: &Fixture) {
    let (custody, store) = f.custodian(CacheOptions::default()).await;
    let key = custody.create_data_key(&f.receipt(Action::Write, "alice").await).await.unwrap();
    let sealed = key.seal(&record_aad("alice"), b"alice's profile").unwrap();
    drop(key);

    let again = custody.data_key(&f.receipt(Action::Read, "alice").await).await.unwrap();
    assert_eq!(again.open(&record_aad("alice"), &sealed).unwrap().as_slice(), b"alice's profile");
    // A write to an existing subject gets the same key too.
    let for_write = custody.data_key(&f.receipt(Action::Write, "alice").await).await.unwrap();
    assert_eq!(for_write.open(&record_aad("alice"), &sealed).unwrap().as_slice(), b"alice's profile");

    let second = custody.create_data_key(&f.receipt(Action::Write, "alice").await).await;
    assert!(matches!(second, Err(KeyError::DataKeyExists)), "{second:?}");
    // The refused creation left the first key in place (the cache off: from the key store).
    let uncached = f.custodian_at(&store, f.kek.clone(), NO_CACHE).await;
    let still = uncached.data_key(&f.receipt(Action::Read, "alice").await).await.unwrap();
    assert_eq!(still.open(&record_aad("alice"), &sealed).unwrap().as_slice(), b"alice's profile");

    // No key was ever made for bob.
    assert!(matches!(custody.data_key(&f.receipt(Action::Read, "bob").await).await, Err(KeyError::NoDataKey)));
    uncached.close().await;
    custody.close().await;
}

/// Each subject has their own key, and a receipt gets its own subject's key, whatever is cached.
async fn a_receipt_gets_its_own_subjects_key(f: &Fixture) {
    let (custody, store) = f.custodian(CacheOptions::default()).await;
    let k1 = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    custody.create_data_key(&f.receipt(Action::Write, "s-2").await).await.unwrap();
    let sealed = k1.seal(b"same aad", b"s-1's data").unwrap();
    drop(k1);
    // s-1's key is in the cache now.
    let k1 = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert_eq!(k1.open(b"same aad", &sealed).unwrap().as_slice(), b"s-1's data");

    let k2 = custody.data_key(&f.receipt(Action::Read, "s-2").await).await.unwrap();
    assert!(matches!(k2.open(b"same aad", &sealed), Err(KeyError::Decrypt)));
    let k2 = custody.data_key(&f.receipt(Action::Read, "s-2").await).await.unwrap();
    assert!(matches!(k2.open(b"same aad", &sealed), Err(KeyError::Decrypt)));

    // s-1's wrapped key copied over s-2's row does not open for s-2: the wrap is bound to the
    // subject (and the KEK backend reports a wrong binding as a failed decryption).
    let (_, s1_wrapped) = wrapped_row(&store, &f.hash("s-1")).await.unwrap();
    tamper(&store, "UPDATE data_keys SET wrapped = $1 WHERE subject = $2", &s1_wrapped, &f.hash("s-2")).await;
    let uncached = f.custodian_at(&store, f.kek.clone(), NO_CACHE).await;
    let moved = uncached.data_key(&f.receipt(Action::Read, "s-2").await).await;
    assert!(matches!(moved, Err(KeyError::Decrypt)), "{moved:?}");
    let k1 = uncached.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert_eq!(k1.open(b"same aad", &sealed).unwrap().as_slice(), b"s-1's data");
    uncached.close().await;
    custody.close().await;
}

/// A receipt for an action that needs no key (or not this one) is refused, and not journalled.
async fn a_receipt_for_the_wrong_action_is_refused(f: &Fixture) {
    let (custody, _store) = f.custodian(CacheOptions::default()).await;
    custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    let before = custody.journal().await.unwrap().len();

    let list = f.receipt(Action::ListAccesses, "s-1").await;
    assert!(matches!(custody.data_key(&list).await, Err(KeyError::Receipt(_))));
    assert!(matches!(custody.create_data_key(&list).await, Err(KeyError::Receipt(_))));
    assert!(matches!(custody.destroy_data_key(&list).await, Err(KeyError::Receipt(_))));
    // A read does not create a key, an erasure does not fetch one, and only an erasure destroys.
    assert!(matches!(custody.create_data_key(&f.receipt(Action::Read, "s-2").await).await, Err(KeyError::Receipt(_))));
    assert!(matches!(custody.data_key(&f.receipt(Action::Erase, "s-1").await).await, Err(KeyError::Receipt(_))));
    assert!(matches!(custody.destroy_data_key(&f.receipt(Action::Read, "s-1").await).await, Err(KeyError::Receipt(_))));
    assert!(matches!(
        custody.destroy_data_key(&f.receipt(Action::Write, "s-1").await).await,
        Err(KeyError::Receipt(_))
    ));

    assert_eq!(custody.journal().await.unwrap().len(), before);
    assert!(matches!(custody.data_key(&f.receipt(Action::Read, "s-2").await).await, Err(KeyError::NoDataKey)));
    // s-1's key survived all that.
    custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    custody.close().await;
}

/// Erasure with the cache on and off: the key is gone, from the cache too, and what was sealed
/// with it cannot be opened any more.
async fn erasure_shreds_the_subjects_data(f: &Fixture) {
    for cache in [CacheOptions::default(), NO_CACHE] {
        let (custody, store) = f.custodian(cache).await;
        let key = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
        custody.create_data_key(&f.receipt(Action::Write, "s-2").await).await.unwrap();
        let aad = record_aad("s-1");
        let sealed = key.seal(&aad, b"s-1's messages").unwrap();
        drop(key);
        // Fetch once (with the cache on, this fills it).
        let key = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
        assert_eq!(key.open(&aad, &sealed).unwrap().as_slice(), b"s-1's messages");
        drop(key);

        // Before the erasure, the KEK opens the stored wrapped key, which opens the data.
        let hash = f.hash("s-1");
        let (version, wrapped) = wrapped_row(&store, &hash).await.unwrap();
        let raw = f.kek.decrypt(version, &aad::data_key_by_hash(&region(), &hash, version), &wrapped).unwrap();
        assert_eq!(open_with_raw(&record_key(&raw, &hash), &aad, &sealed).unwrap(), b"s-1's messages");
        assert!(contains(&store_bytes(&store).await, &wrapped));

        assert!(custody.destroy_data_key(&f.receipt(Action::Erase, "s-1").await).await.unwrap());
        assert!(matches!(custody.data_key(&f.receipt(Action::Read, "s-1").await).await, Err(KeyError::NoDataKey)));
        assert!(matches!(custody.data_key(&f.receipt(Action::Write, "s-1").await).await, Err(KeyError::NoDataKey)));
        assert!(!custody.destroy_data_key(&f.receipt(Action::Erase, "s-1").await).await.unwrap());

        // No copy of the wrapped key is left in the key store's files: not even the KEK can
        // bring the data key back.
        assert!(wrapped_row(&store, &hash).await.is_none());
        assert!(
            !contains(&store_bytes(&store).await, &wrapped),
            "the erased wrapped key is still in the key store's files"
        );

        // A subject registered again under the same id gets a new key, which does not open the
        // old ciphertext.
        let new = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
        assert!(matches!(new.open(&aad, &sealed), Err(KeyError::Decrypt)));
        let new = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
        assert!(matches!(new.open(&aad, &sealed), Err(KeyError::Decrypt)));

        // Other subjects are untouched.
        custody.data_key(&f.receipt(Action::Read, "s-2").await).await.unwrap();
        custody.close().await;
    }
}

/// The journal has one record per key handed out (and per erasure), naming the log entry of the
/// access, and whether the key came from the cache (a key just made is cached: the reads after
/// the write find it there, when there is a cache).
async fn the_journal_records_every_key_handed_out(f: &Fixture) {
    for (cache, reads_cached) in [(CacheOptions::default(), true), (NO_CACHE, false)] {
        let (custody, _store) = f.custodian(cache).await;
        let write = f.receipt(Action::Write, "s-1").await;
        custody.create_data_key(&write).await.unwrap();
        let read1 = f.receipt(Action::Read, "s-1").await;
        custody.data_key(&read1).await.unwrap();
        let read2 = f.receipt(Action::Read, "s-1").await;
        custody.data_key(&read2).await.unwrap();
        // Refused: not journalled.
        assert!(custody.data_key(&f.receipt(Action::ListAccesses, "s-1").await).await.is_err());
        assert!(custody.data_key(&f.receipt(Action::Read, "s-2").await).await.is_err());
        let erase = f.receipt(Action::Erase, "s-1").await;
        custody.destroy_data_key(&erase).await.unwrap();

        let journal = custody.journal().await.unwrap();
        let expected = [
            (&write, "write", None, false),
            (&read1, "read", Some("support"), reads_cached),
            (&read2, "read", Some("support"), reads_cached),
            (&erase, "erase", None, false),
        ];
        assert_eq!(journal.len(), expected.len(), "{journal:#?}");
        for (record, (receipt, action, purpose, cached)) in journal.iter().zip(expected) {
            assert_eq!(record.subject, f.hash("s-1"));
            assert_ne!(record.subject, "s-1");
            assert_eq!(record.action, action);
            assert_eq!(record.log_index, receipt.index());
            assert_eq!(record.entry_hash, receipt.entry_hash_hex());
            assert_eq!(record.entry_hash.len(), 64);
            assert_eq!(record.purpose.as_deref(), purpose);
            assert_eq!(record.purpose.as_deref(), receipt.purpose());
            assert_eq!(record.cached, cached, "{record:?}");
            assert!(record.time > 1_700_000_000);
        }
        // The log indexes are the log's own.
        assert!(journal.windows(2).all(|w| w[0].log_index < w[1].log_index));
        assert!(journal.iter().all(|r| r.log_index < f.log.size()));
        custody.close().await;
    }
}

/// Rotation: a new KEK version, every data key re-wrapped under it in batches, the old version
/// retired only once nothing uses it; the keys still open what they sealed.
async fn rotation_rewraps_everything_then_retires(f: &Fixture) {
    let (custody, store) = f.custodian(NO_CACHE).await;
    let old = f.kek.current_version().unwrap();
    let mut sealed = Vec::new();
    for i in 0..5 {
        let id = format!("s-{i}");
        let key = custody.create_data_key(&f.receipt(Action::Write, &id).await).await.unwrap();
        sealed.push((id.clone(), key.seal(&record_aad(&id), id.as_bytes()).unwrap()));
    }
    let metadata = custody.seal_metadata(&subject("s-0"), b"minor until 2031").await.unwrap();
    // Five data keys and the region's metadata key.
    assert_eq!(custody.version_counts().await.unwrap(), vec![(old, 6)]);

    let new = f.kek.add_version().unwrap();
    assert_eq!(new, old + 1);
    assert_eq!(f.kek.current_version().unwrap(), new);
    assert_eq!(custody.version_counts().await.unwrap(), vec![(old, 6), (new, 0)]);
    assert!(
        matches!(custody.retire(old, None).await, Err(KeyError::VersionInUse { version, count: 6 }) if version == old)
    );

    // New keys are wrapped under the new version straight away.
    custody.create_data_key(&f.receipt(Action::Write, "s-new").await).await.unwrap();
    assert_eq!(wrapped_row(&store, &f.hash("s-new")).await.unwrap().0, new);

    let mut batches = Vec::new();
    loop {
        let n = custody.rewrap_batch(4).await.unwrap();
        batches.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(batches, vec![4, 2, 0]);
    assert_eq!(custody.version_counts().await.unwrap(), vec![(old, 0), (new, 7)]);
    assert_eq!(wrapped_row(&store, METADATA_KEY).await.unwrap().0, new);

    // The current version cannot go; the old one can, now that nothing uses it.
    assert!(matches!(f.kek.retire_version(new), Err(KeyError::CurrentVersion(v)) if v == new));
    assert!(matches!(custody.retire(new, None).await, Err(KeyError::VersionInUse { .. })));
    custody.retire(old, None).await.unwrap();
    assert_eq!(f.kek.versions().unwrap(), vec![new]);
    assert_eq!(custody.version_counts().await.unwrap(), vec![(new, 7)]);
    assert!(matches!(custody.retire(old, None).await, Err(KeyError::UnknownKekVersion(v)) if v == old));

    // Every key still opens what it sealed (the cache is off: each is unwrapped anew).
    for (id, sealed) in &sealed {
        let key = custody.data_key(&f.receipt(Action::Read, id).await).await.unwrap();
        assert_eq!(key.open(&record_aad(id), sealed).unwrap().as_slice(), id.as_bytes());
    }
    // And the re-wrapped metadata key, loaded afresh, still opens the metadata.
    custody.close().await;
    let reopened = f.custodian_at(&store, f.kek.clone(), NO_CACHE).await;
    assert_eq!(reopened.open_metadata(&subject("s-0"), &metadata).await.unwrap().as_slice(), b"minor until 2031");
    reopened.close().await;
}

/// Metadata opens for its own subject only, is not in the clear, and survives a reopen.
async fn metadata_is_sealed_and_bound_to_its_subject(f: &Fixture) {
    let (custody, store) = f.custodian(CacheOptions::default()).await;
    let plaintext = b"{\"minor_until\":\"2029-05-01\"}";
    let sealed = custody.seal_metadata(&subject("s-1"), plaintext).await.unwrap();
    assert!(!contains(&sealed, b"2029"));
    assert_ne!(custody.seal_metadata(&subject("s-1"), plaintext).await.unwrap(), sealed);
    assert_eq!(custody.open_metadata(&subject("s-1"), &sealed).await.unwrap().as_slice(), plaintext);
    assert!(matches!(custody.open_metadata(&subject("s-2"), &sealed).await, Err(KeyError::Decrypt)));
    let mut altered = sealed.clone();
    *altered.last_mut().unwrap() ^= 1;
    assert!(matches!(custody.open_metadata(&subject("s-1"), &altered).await, Err(KeyError::Decrypt)));
    assert!(custody.open_metadata(&subject("s-1"), &sealed[..3]).await.is_err());
    custody.close().await;

    let reopened = f.custodian_at(&store, f.kek.clone(), NO_CACHE).await;
    assert_eq!(reopened.open_metadata(&subject("s-1"), &sealed).await.unwrap().as_slice(), plaintext);
    reopened.close().await;
    // Another key store has its own metadata key.
    let (other, _other_store) = f.custodian(NO_CACHE).await;
    assert!(matches!(other.open_metadata(&subject("s-1"), &sealed).await, Err(KeyError::Decrypt)));
    other.close().await;
}

/// Pseudonyms are stable within a purpose and destination, and unlinkable across them.
async fn pseudonyms_are_stable_per_purpose(f: &Fixture) {
    let (custody, _store) = f.custodian(CacheOptions::default()).await;
    let record = clover_custodian::id_input("record", RECORD);
    let read = f.pseudonymised_read("s-1", "analytics").await;
    let token = custody.pseudonym(&read, "analytics", "us", record.as_bytes()).await.unwrap();
    // Another read for the same purpose, from the same region: the same token.
    let again = f.pseudonymised_read("s-1", "analytics").await;
    assert_eq!(custody.pseudonym(&again, "analytics", "us", record.as_bytes()).await.unwrap(), token);
    assert!(token.starts_with("tok_") && token.len() == 4 + 32, "{token}");
    assert!(!token.contains(RECORD));
    let fraud = f.pseudonymised_read("s-1", "fraud").await;
    assert_ne!(custody.pseudonym(&fraud, "fraud", "us", record.as_bytes()).await.unwrap(), token);
    let subject = clover_custodian::id_input("subject-hash", &f.hash("s-1"));
    assert_ne!(custody.pseudonym(&read, "analytics", "us", subject.as_bytes()).await.unwrap(), token);
    // The root, not the subject-index key, keys them.
    assert_ne!(PseudonymRoot::new(1, &f.root).token("analytics", "us", record.as_bytes()), token);
    assert_eq!(PseudonymRoot::new(1, &f.pseudonym_secret).token("analytics", "us", record.as_bytes()), token);
    // Stable across key stores with the same root: the root, not the store, keys them.
    let (other, _other_store) = f.custodian(NO_CACHE).await;
    assert_eq!(other.pseudonym(&read, "analytics", "us", record.as_bytes()).await.unwrap(), token);
    other.close().await;
    custody.close().await;
}

/// A pseudonym is answered only for the read it is for: a read granted a pseudonymised view, for
/// the purpose and region its tokens are keyed for, of one of that read's ids and nothing else
/// (a token of any other input would let the gateway test guesses of the values the view hides),
/// a bounded number per receipt; each is journalled against the read, with no input; the
/// receipt is not used up (the read's view was made for it).
async fn pseudonyms_need_a_pseudonymised_reads_receipt(f: &Fixture) {
    let (custody, _store) = f.custodian(CacheOptions::default()).await;
    let key = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    let sealed = key.seal(&record_aad("s-1"), br#"{"display_name":"Ana"}"#).unwrap();
    let record = clover_custodian::id_input("record", RECORD);
    let subject = clover_custodian::id_input("subject-hash", &f.hash("s-1"));
    let read = f.pseudonymised_read("s-1", "analytics").await;
    // The read's view first, as the boundary asks: the token does not need the receipt unused,
    // and is the one the view names the record by.
    let view = custody.view(&read, &sealed, &record_aad("s-1"), false).await.unwrap();
    assert_eq!(custody.pseudonym(&read, "analytics", "us", record.as_bytes()).await.unwrap(), view.record);
    assert_eq!(custody.pseudonym(&read, "analytics", "us", subject.as_bytes()).await.unwrap(), view.subject);

    let refused = |outcome: Result<String, KeyError>, expected: &str| match outcome {
        Err(KeyError::Receipt(m)) => assert!(m.contains(expected), "{m}"),
        other => panic!("{other:?}"),
    };
    // A guess of a value the view tokenised, another record's id, a subject's id in the clear:
    // no token.
    let only_ids = "a token is answered only for the ids of the record it read";
    for guess in [
        b"display_name\0\"Ana\"".to_vec(),
        clover_custodian::id_input("record", "0b8e6f7a-3c1d-4f2e-9a5b-000000000000").into_bytes(),
        clover_custodian::id_input("subject", "s-1").into_bytes(),
        clover_custodian::id_input("subject-hash", &f.hash("s-2")).into_bytes(),
    ] {
        refused(custody.pseudonym(&read, "analytics", "us", &guess).await, only_ids);
    }
    // Another purpose or region than the read's.
    refused(
        custody.pseudonym(&read, "safety", "us", record.as_bytes()).await,
        "it declared the purpose \"analytics\", not \"safety\"",
    );
    refused(
        custody.pseudonym(&read, "analytics", "sg", record.as_bytes()).await,
        "it came from region \"us\", not \"sg\"",
    );
    // A read in full view, a write: nothing to pseudonymise.
    let full = f.receipt(Action::Read, "s-1").await;
    refused(custody.pseudonym(&full, "support", "eu", record.as_bytes()).await, "grants no pseudonymised view");
    let write = f.receipt(Action::Write, "s-1").await;
    refused(custody.pseudonym(&write, "analytics", "us", record.as_bytes()).await, "grants no pseudonymised view");

    // The bound: the read has had two tokens; the rest up to the bound, then no more.
    for _ in 2..PSEUDONYMS_PER_RECEIPT {
        custody.pseudonym(&read, "analytics", "us", record.as_bytes()).await.unwrap();
    }
    match custody.pseudonym(&read, "analytics", "us", record.as_bytes()).await {
        Err(KeyError::TooManyPseudonyms(m)) => assert!(m.contains(&format!("log entry {}", read.index())), "{m}"),
        other => panic!("{other:?}"),
    }
    // Another read gets its own.
    let next = f.pseudonymised_read("s-1", "analytics").await;
    custody.pseudonym(&next, "analytics", "us", record.as_bytes()).await.unwrap();

    // The journal: the write, the read's view, one row per token answered (none for the
    // refusals), naming the read; never an input.
    let journal = custody.journal().await.unwrap();
    let actions: Vec<&str> = journal.iter().map(|r| r.action.as_str()).collect();
    let tokens = usize::try_from(PSEUDONYMS_PER_RECEIPT).unwrap();
    assert_eq!(actions.len(), 2 + tokens + 1, "{actions:?}");
    assert_eq!(&actions[..2], ["write", "view"]);
    let pseudonyms = &journal[2..];
    assert!(pseudonyms.iter().all(|r| r.action == clover_custodian::PSEUDONYM_ACTION && !r.cached));
    assert!(pseudonyms[..tokens].iter().all(|r| r.log_index == read.index() && r.entry_hash == read.entry_hash_hex()));
    assert!(pseudonyms.iter().all(|r| r.purpose.as_deref() == Some("analytics") && r.subject == f.hash("s-1")));
    assert_eq!(pseudonyms[tokens].log_index, next.index());
    let text = format!("{journal:?}");
    assert!(!text.contains("Ana") && !text.contains(RECORD), "{text}");
    custody.close().await;
}

/// A read granted a pseudonymised view gets no key, which would open every field: the
/// custodian opens the record itself and answers only the view its own rules make, for the
/// record version the receipt names and no other, once.
async fn a_pseudonymised_read_gets_its_view_never_its_key(f: &Fixture) {
    use clover_model::{FieldRule, ViewConfig, ViewRules};
    let rules = ViewRules::new(vec![ViewConfig {
        category: "profile".parse().unwrap(),
        fields: [("display_name".to_owned(), FieldRule::Token), ("email".to_owned(), FieldRule::Mask)].into(),
        default: FieldRule::Drop,
    }]);
    let (custody, _store) = f.custodian(CacheOptions::default()).await;
    let custody = custody.with_views(rules);
    let key = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    let fields = br#"{"display_name":"Ana","email":"ana@example.org","city":"Galway"}"#;
    let sealed = key.seal(&record_aad("s-1"), fields).unwrap();
    let read = f.pseudonymised_read("s-1", "analytics").await;
    let refused = |outcome: Result<(), KeyError>, expected: &str| match outcome {
        Err(KeyError::Receipt(m)) => assert!(m.contains(expected), "{m}"),
        other => panic!("{other:?}"),
    };

    // No key for it, whole or re-sealed.
    let no_key = "it granted a pseudonymised view, which opens no key";
    refused(custody.data_key(&read).await.map(drop), no_key);
    refused(custody.reseal(&read, &sealed, &record_aad("s-1")).await.map(drop), no_key);
    // A ciphertext bound to another record version, or another subject's: refused before it
    // is opened, even one sealed with the subject's whole key (legacy).
    let other_record = aad::record(&region(), &subject("s-1"), &RecordId::random(), 1);
    let other_version = aad::record(&region(), &subject("s-1"), &RECORD.parse().unwrap(), 2);
    for (aad, legacy) in [
        (other_record.clone(), false),
        (other_record, true),
        (other_version, true),
        (aad::record(&"us".parse().unwrap(), &subject("s-1"), &RECORD.parse().unwrap(), 1), true),
        (aad::subject(&region(), &subject("s-1")), true),
    ] {
        refused(
            custody.view(&read, &sealed, &aad, legacy).await.map(drop),
            "the ciphertext is bound to another record version than the one it names",
        );
    }
    // A read whose entry names no view, or another, gets neither a key nor a view: fail closed.
    for view in [None, Some("Full"), Some("partial")] {
        let unnamed = f.receipt_with_view(Action::Read, "s-1", view).await;
        refused(custody.data_key(&unnamed).await.map(drop), "its entry grants no view");
        refused(custody.view(&unnamed, &sealed, &record_aad("s-1"), false).await.map(drop), "its entry grants no view");
    }
    // A read in full view asks for its key, not a view.
    let full = f.receipt(Action::Read, "s-1").await;
    refused(custody.view(&full, &sealed, &record_aad("s-1"), false).await.map(drop), "it granted the full view");

    // The view: the name a token keyed for the read's purpose and region, the email masked,
    // the city dropped (the category's default).
    let view = custody.view(&read, &sealed, &record_aad("s-1"), false).await.unwrap();
    let root = PseudonymRoot::new(1, &f.pseudonym_secret);
    let token = root.token("analytics", "us", b"display_name\0\"Ana\"");
    assert_eq!(
        serde_json::Value::Object(view.fields.as_map().clone()),
        serde_json::json!({"display_name": token, "email": "a***@example.org"})
    );
    // The record and its subject by tokens of their ids (the subject's keyed hash), keyed alike.
    let record = clover_custodian::id_input("record", RECORD);
    assert_eq!(view.record, root.token("analytics", "us", record.as_bytes()));
    let subject = clover_custodian::id_input("subject-hash", &f.hash("s-1"));
    assert_eq!(view.subject, root.token("analytics", "us", subject.as_bytes()));
    // Once.
    let again = custody.view(&read, &sealed, &record_aad("s-1"), false).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&read)), "{again:?}");
    // Tampered ciphertext does not open, nor one bound to another subject (whose key it is not).
    let mut altered = sealed.clone();
    *altered.last_mut().unwrap() ^= 1;
    let next = f.pseudonymised_read("s-1", "analytics").await;
    assert!(matches!(custody.view(&next, &altered, &record_aad("s-1"), false).await, Err(KeyError::Decrypt)));
    let next = f.pseudonymised_read("s-1", "analytics").await;
    assert!(matches!(custody.view(&next, &sealed, &record_aad("s-2"), true).await, Err(KeyError::Decrypt)));
    // Journalled as the read it is, never a value.
    let journal = custody.journal().await.unwrap();
    let actions: Vec<&str> = journal.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["write", clover_custodian::VIEW_ACTION], "{journal:?}");
    assert_eq!((journal[1].log_index, journal[1].purpose.as_deref()), (read.index(), Some("analytics")));
    custody.close().await;
}

/// A record repatriated from abroad is written through the write path: its entry (a `write`
/// whose action is `repatriate`) makes the subject's key like a write's, and yields the key of
/// the record version it names, which a later read opens; the receipt is used once.
async fn a_repatriated_record_gets_its_key_like_a_write(f: &Fixture) {
    let (custody, _store) = f.custodian(CacheOptions::default()).await;
    let repatriated = f.receipt(Action::Repatriate, "s-1").await;
    let key = custody.create_data_key(&repatriated).await.unwrap();
    let sealed = key.seal(&record_aad("s-1"), br#"{"display_name":"Ana"}"#).unwrap();
    let again = custody.data_key(&repatriated).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&repatriated)), "{again:?}");
    // Another record of the same subject repatriated later: the subject has its key already.
    let next = f.receipt(Action::Repatriate, "s-1").await;
    assert_eq!(custody.data_key(&next).await.unwrap().expose(), key.expose());
    // A read opens what was repatriated.
    let read = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert_eq!(read.open(&record_aad("s-1"), &sealed).unwrap().as_slice(), br#"{"display_name":"Ana"}"#);
    // It is not an erasure.
    assert!(matches!(
        custody.destroy_data_key(&f.receipt(Action::Repatriate, "s-1").await).await,
        Err(KeyError::Receipt(_))
    ));
    let journal = custody.journal().await.unwrap();
    let actions: Vec<&str> = journal.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["repatriate", "repatriate", "read"]);
    custody.close().await;
}

/// The key store holds wrapped keys only: no data key and no subject id in the clear.
async fn the_key_store_holds_no_key_in_the_clear(f: &Fixture) {
    let (custody, store) = f.custodian(CacheOptions::default()).await;
    let mut raws = Vec::new();
    for id in ["subject-alice-0001", "subject-bob-0002", "subject-carol-0003"] {
        let key = custody.create_data_key(&f.receipt(Action::Write, id).await).await.unwrap();
        let aad = record_aad(id);
        let sealed = key.seal(&aad, b"payload").unwrap();
        custody.data_key(&f.receipt(Action::Read, id).await).await.unwrap();
        let hash = f.hash(id);
        let (version, wrapped) = wrapped_row(&store, &hash).await.unwrap();
        let raw = f.kek.decrypt(version, &aad::data_key_by_hash(&region(), &hash, version), &wrapped).unwrap();
        assert_eq!(raw.len(), 32);
        // These are the key's bytes: they open what the key sealed.
        assert_eq!(open_with_raw(&record_key(&raw, &hash), &aad, &sealed).unwrap(), b"payload");
        raws.push((id, raw, wrapped));
    }
    custody.flush_journal().await;
    let bytes = store_bytes(&store).await;
    for (id, raw, wrapped) in &raws {
        // The search finds what is there...
        assert!(contains(&bytes, wrapped));
        // ...and neither the key nor the subject's id is.
        assert!(!contains(&bytes, raw), "a data key is in the clear in the key store");
        assert!(!contains(&bytes, id.as_bytes()), "a subject id is in the clear in the key store");
    }
    custody.close().await;
    let bytes = store_bytes(&store).await;
    for (id, raw, _) in &raws {
        assert!(!contains(&bytes, raw));
        assert!(!contains(&bytes, id.as_bytes()));
    }
}

/// The backend opened again finds the same versions, and the same keys behind them.
async fn the_backend_reopens_with_the_same_versions(f: &Fixture) {
    let (custody, store) = f.custodian(NO_CACHE).await;
    let k1 = custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    let sealed1 = k1.seal(b"aad", b"one").unwrap();
    let v2 = f.kek.add_version().unwrap();
    let k2 = custody.create_data_key(&f.receipt(Action::Write, "s-2").await).await.unwrap();
    let sealed2 = k2.seal(b"aad", b"two").unwrap();
    let metadata = custody.seal_metadata(&subject("s-1"), b"meta").await.unwrap();
    let direct = f.kek.encrypt(v2, b"direct", b"kek").unwrap();
    custody.close().await;

    let kek = f.reopen_kek();
    assert_eq!(kek.versions().unwrap(), f.kek.versions().unwrap());
    assert_eq!(kek.versions().unwrap(), vec![v2 - 1, v2]);
    assert_eq!(kek.current_version().unwrap(), v2);
    assert_eq!(kek.decrypt(v2, b"direct", &direct).unwrap().as_slice(), b"kek");
    let custody = f.custodian_at(&store, kek.clone(), NO_CACHE).await;
    let k1 = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert_eq!(k1.open(b"aad", &sealed1).unwrap().as_slice(), b"one");
    let k2 = custody.data_key(&f.receipt(Action::Read, "s-2").await).await.unwrap();
    assert_eq!(k2.open(b"aad", &sealed2).unwrap().as_slice(), b"two");
    assert_eq!(custody.open_metadata(&subject("s-1"), &metadata).await.unwrap().as_slice(), b"meta");

    // A retirement is seen by the next opening too.
    while custody.rewrap_batch(100).await.unwrap() > 0 {}
    custody.retire(v2 - 1, None).await.unwrap();
    custody.close().await;
    let kek = f.reopen_kek();
    assert_eq!(kek.versions().unwrap(), vec![v2]);
    let custody = f.custodian_at(&store, kek, NO_CACHE).await;
    let k1 = custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert_eq!(k1.open(b"aad", &sealed1).unwrap().as_slice(), b"one");
    custody.close().await;
}

// ---------------------------------------------------------------------------------------------
// PKCS#11 only.
// ---------------------------------------------------------------------------------------------

/// The KEK versions are sensitive, non-extractable token objects; a retired one is destroyed in
/// the token.
#[tokio::test]
async fn pkcs11_keks_never_leave_the_token() {
    let Some(f) = Fixture::softhsm("pkcs11_keks_never_leave_the_token") else { return };
    let Backend::Pkcs11 { config } = &f.backend else { unreachable!() };
    assert!(f.kek.describe().contains(&config.token_label));
    let v2 = f.kek.add_version().unwrap();
    assert_eq!(f.kek.versions().unwrap(), vec![1, 2]);

    let module = clover_keys::pkcs11::module(&config.module).unwrap();
    let slot = clover_keys::pkcs11::token_slot(&module, &config.token_label).unwrap();
    let session = module.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let find = |version: u32| {
        session.find_objects(&[Attribute::Label(format!("clover/{REGION}/kek/v{version}").into_bytes())]).unwrap()
    };
    for version in [1, v2] {
        let handles = find(version);
        assert_eq!(handles.len(), 1, "kek v{version}");
        let attributes = session
            .get_attributes(
                handles[0],
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                    AttributeType::Private,
                ],
            )
            .unwrap();
        for expected in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Token(true),
            Attribute::Private(true),
        ] {
            assert!(attributes.contains(&expected), "kek v{version}: {expected:?} not in {attributes:?}");
        }
        // The token will not give the value out.
        let value = session.get_attributes(handles[0], &[AttributeType::Value]);
        assert!(matches!(value, Ok(ref a) if a.is_empty()) || value.is_err(), "kek v{version}: {value:?}");
    }

    // Another region's KEK versions in the same token are its own.
    let us = Pkcs11Kek::open(config, "us".parse().unwrap(), AuthPin::new(USER_PIN.into())).unwrap();
    assert_eq!(us.versions().unwrap(), vec![1]);
    assert_eq!(f.reopen_kek().versions().unwrap(), vec![1, v2]);

    // Retiring v1 destroys its object in the token.
    f.kek.retire_version(1).unwrap();
    assert!(find(1).is_empty());
    assert_eq!(find(v2).len(), 1);
    assert_eq!(f.reopen_kek().versions().unwrap(), vec![v2]);

    // Logged out (a login holds for every session of the process, and logging out invalidates
    // the handles of private objects: this goes last), the keys are not even visible, and a
    // wrong PIN does not open the token.
    session.logout().unwrap();
    assert!(find(v2).is_empty());
    let wrong = Pkcs11Kek::open(config, region(), AuthPin::new("0000".into()));
    assert!(matches!(wrong, Err(KeyError::Pkcs11 { .. })), "{wrong:?}");
}

/// An unknown token label is an error that names it.
#[tokio::test]
async fn pkcs11_unknown_token_is_an_error() {
    let Some(f) = Fixture::softhsm("pkcs11_unknown_token_is_an_error") else { return };
    let Backend::Pkcs11 { config } = &f.backend else { unreachable!() };
    let missing = Pkcs11Config { module: config.module.clone(), token_label: "no-such-token".into() };
    match Pkcs11Kek::open(&missing, region(), AuthPin::new(USER_PIN.into())) {
        Err(KeyError::Hsm(message)) => assert!(message.contains("no-such-token"), "{message}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// SoftHSM2 plumbing.
// ---------------------------------------------------------------------------------------------

fn module_path() -> PathBuf {
    let path = std::env::var_os(MODULE_ENV).map_or_else(|| PathBuf::from(SOFTHSM_MODULE), PathBuf::from);
    assert!(
        path.exists(),
        "SoftHSM2 is not installed: {} is missing. Install it (`apt-get install softhsm2`), or set \
         {MODULE_ENV} to the path of libsofthsm2.so.",
        path.display()
    );
    path
}

/// Runs the test `name` again in a child process with a SoftHSM2 configuration of its own, and
/// fails unless it passed there.
fn run_in_softhsm_child(name: &str) {
    let module = module_path();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n\
             slots.mechanisms = ALL\nlibrary.reset_on_fork = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .env(MODULE_ENV, &module)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} failed against SoftHSM2 ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // The token was made where this test said, and goes with the directory.
    assert!(std::fs::read_dir(&tokens).unwrap().next().is_some(), "no token was made in {}", tokens.display());
}

/// Makes a new token on a free slot, with a user PIN; returns its label.
fn new_token(module_path: &Path) -> String {
    static TOKENS: Mutex<u32> = Mutex::new(0);
    let mut made = TOKENS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *made += 1;
    let label = format!("clover-test-{}-{made}", std::process::id());
    let module = clover_keys::pkcs11::module(module_path).unwrap();
    let slot = module
        .get_all_slots()
        .unwrap()
        .into_iter()
        .find(|slot| module.get_token_info(*slot).is_ok_and(|info| !info.token_initialized()))
        .expect("SoftHSM2 offers no free slot");
    let so_pin = AuthPin::new(SO_PIN.into());
    module.init_token(slot, &so_pin, &label).unwrap();
    let slot = clover_keys::pkcs11::token_slot(&module, &label).unwrap();
    let session = module.open_rw_session(slot).unwrap();
    session.login(UserType::So, Some(&so_pin)).unwrap();
    session.init_pin(&AuthPin::new(USER_PIN.into())).unwrap();
    session.logout().unwrap();
    label
}

/// Runs each suite function against the keyring (`keyring::<name>`), the keyring with its key
/// stores in PostgreSQL (`postgres::<name>`) and a SoftHSM2 token (`pkcs11::<name>`).
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod keyring {
            $(
                #[tokio::test]
                async fn $test() {
                    let f = super::Fixture::keyring();
                    super::$test(&f).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let f = super::Fixture::keyring_on_postgres();
                    super::$test(&f).await;
                }
            )*
        }

        mod pkcs11 {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(f) = super::Fixture::softhsm(concat!("pkcs11::", stringify!($test))) {
                        super::$test(&f).await;
                    }
                }
            )*
        }
    };
}

/// A key leaves the custodian only once its journal record is committed: with the journal's
/// table gone, every key is withheld (from the cache too), and nothing is handed out unrecorded.
/// Before, the key was returned first and a failed write only logged.
async fn a_key_whose_journal_record_cannot_be_written_is_withheld(f: &Fixture) {
    for cache in [CacheOptions::default(), NO_CACHE] {
        let (custody, store) = f.custodian(cache).await;
        custody.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
        custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
        tamper_sql(&store, "ALTER TABLE unwraps RENAME TO unwraps_elsewhere").await;
        let withheld = custody.data_key(&f.receipt(Action::Read, "s-1").await).await;
        assert!(matches!(&withheld, Err(KeyError::Store { operation: "writing the journal", .. })), "{withheld:?}");
        let withheld = custody.create_data_key(&f.receipt(Action::Write, "s-2").await).await;
        assert!(withheld.is_err(), "{withheld:?}");
        tamper_sql(&store, "ALTER TABLE unwraps_elsewhere RENAME TO unwraps").await;
        custody.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
        let journal = custody.journal().await.unwrap();
        assert_eq!(journal.len(), 3, "the write, the first read and the last: {journal:#?}");
        custody.close().await;
    }
}

/// What a second use of a receipt is refused with.
fn used_up(receipt: &Receipt) -> String {
    format!("the receipt for log entry {} was already used: a receipt opens its key once", receipt.index())
}

/// A receipt presented twice is refused the second time: for the same key or for another call,
/// with the key cached or not, and by the custodian opened again on its key store. Nothing is
/// journalled for the refusals.
async fn a_receipt_presented_twice_is_refused_the_second_time(f: &Fixture) {
    let (custody, store) = f.custodian(CacheOptions::default()).await;
    let write = f.receipt(Action::Write, "s-1").await;
    custody.create_data_key(&write).await.unwrap();
    // A write may fetch its subject's key, but not with the receipt that made it.
    let again = custody.data_key(&write).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&write)), "{again:?}");
    assert!(matches!(custody.create_data_key(&write).await, Err(KeyError::Receipt(_))));
    let read = f.receipt(Action::Read, "s-1").await;
    custody.data_key(&read).await.unwrap();
    // The key is cached now: the cache does not honour the receipt again either.
    let again = custody.data_key(&read).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&read)), "{again:?}");
    assert_eq!(custody.journal().await.unwrap().len(), 2, "the write and the read");
    custody.close().await;

    let reopened = f.custodian_at(&store, f.kek.clone(), NO_CACHE).await;
    assert!(matches!(reopened.data_key(&read).await, Err(KeyError::Receipt(_))));
    reopened.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    let erase = f.receipt(Action::Erase, "s-1").await;
    assert!(reopened.destroy_data_key(&erase).await.unwrap());
    let again = reopened.destroy_data_key(&erase).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&erase)), "{again:?}");
    let journal = reopened.journal().await.unwrap();
    let actions: Vec<&str> = journal.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["write", "read", "read", "erase"]);
    reopened.close().await;
}

suite!(
    a_key_whose_journal_record_cannot_be_written_is_withheld,
    a_data_key_made_for_a_write_opens_on_a_read,
    a_receipt_gets_its_own_subjects_key,
    a_receipt_for_the_wrong_action_is_refused,
    a_receipt_presented_twice_is_refused_the_second_time,
    erasure_shreds_the_subjects_data,
    the_journal_records_every_key_handed_out,
    rotation_rewraps_everything_then_retires,
    metadata_is_sealed_and_bound_to_its_subject,
    pseudonyms_are_stable_per_purpose,
    pseudonyms_need_a_pseudonymised_reads_receipt,
    a_pseudonymised_read_gets_its_view_never_its_key,
    a_repatriated_record_gets_its_key_like_a_write,
    the_key_store_holds_no_key_in_the_clear,
    the_backend_reopens_with_the_same_versions,
);

/// Two custodians on one PostgreSQL key store (two gateways of a region): an erasure through one
/// reaches the other's cache at once, and a receipt from before it makes no key through either.
#[tokio::test]
async fn an_erasure_reaches_every_custodian_sharing_a_postgres_key_store() {
    let f = Fixture::keyring_on_postgres();
    let (a, store) = f.custodian(CacheOptions::default()).await;
    let b = f.custodian_at(&store, f.kek.clone(), CacheOptions::default()).await;
    let before = f.receipt(Action::Write, "s-1").await;
    a.create_data_key(&before).await.unwrap();
    // b has the key cached.
    b.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    b.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    assert!(b.journal().await.unwrap().last().unwrap().cached);

    assert!(a.destroy_data_key(&f.receipt(Action::Erase, "s-1").await).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match b.data_key(&f.receipt(Action::Read, "s-1").await).await {
            Err(KeyError::NoDataKey) => break,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "the other custodian still hands out an erased key"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A write logged before the erasure makes no new key through either custodian.
    assert!(matches!(b.create_data_key(&before).await, Err(KeyError::Receipt(_))));
    assert!(matches!(a.create_data_key(&before).await, Err(KeyError::Receipt(_))));
    // A later one does: the subject registered again.
    b.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    a.data_key(&f.receipt(Action::Read, "s-1").await).await.unwrap();
    a.close().await;
    b.close().await;
}

/// Two custodians on one PostgreSQL key store (two gateways of a region): a receipt one
/// honoured, the other refuses; presented to both at once, exactly one honours it.
#[tokio::test]
async fn a_receipt_one_custodian_honoured_is_refused_by_another_sharing_its_key_store() {
    let f = Fixture::keyring_on_postgres();
    let (a, store) = f.custodian(CacheOptions::default()).await;
    let b = f.custodian_at(&store, f.kek.clone(), CacheOptions::default()).await;
    let write = f.receipt(Action::Write, "s-1").await;
    a.create_data_key(&write).await.unwrap();
    assert!(matches!(b.create_data_key(&write).await, Err(KeyError::Receipt(_))));
    let read = f.receipt(Action::Read, "s-1").await;
    b.data_key(&read).await.unwrap();
    let again = a.data_key(&read).await;
    assert!(matches!(&again, Err(KeyError::Receipt(m)) if *m == used_up(&read)), "{again:?}");

    for _ in 0..10 {
        let read = f.receipt(Action::Read, "s-1").await;
        let (by_a, by_b) = tokio::join!(a.data_key(&read), b.data_key(&read));
        match (&by_a, &by_b) {
            (Ok(_), Err(KeyError::Receipt(_))) | (Err(KeyError::Receipt(_)), Ok(_)) => {}
            _ => panic!("one of the two must honour the receipt: {by_a:?} {by_b:?}"),
        }
    }
    a.flush_journal().await;
    b.flush_journal().await;
    // The journal is the key store's, shared: one record per receipt honoured.
    assert_eq!(a.journal().await.unwrap().len(), 12);
    a.close().await;
    b.close().await;
}

/// Waits until `done` answers true, for up to ten seconds (a notice crosses the database).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "not after ten seconds: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two custodians on one PostgreSQL key store: an erasure through one makes the subject's
/// metadata key, and so their tag key, unavailable through the other too, though the other had
/// them cached.
#[tokio::test]
async fn an_erasure_reaches_the_tag_keys_every_custodian_sharing_a_postgres_key_store_caches() {
    let f = Fixture::keyring_on_postgres();
    let (a, store) = f.custodian(CacheOptions::default()).await;
    let b = f.custodian_at(&store, f.kek.clone(), CacheOptions::default()).await;
    let (s1, hash) = (subject("s-1"), f.hash("s-1"));
    a.create_data_key(&f.receipt(Action::Write, "s-1").await).await.unwrap();
    let plaintext = b"{\"minor_until\":\"2029-05-01\"}";
    let sealed = a.seal_metadata(&s1, plaintext).await.unwrap();
    let tag = a.subject_tag_key_for(&hash, false).await.unwrap().unwrap().tag().unwrap();
    // b has the subject's metadata key cached, and derives their tag key from it.
    assert_eq!(b.open_metadata(&s1, &sealed).await.unwrap().as_slice(), plaintext);
    assert!(b.subject_tag_key_for(&hash, false).await.unwrap().is_some());
    assert!(b.tag_is_subjects(&hash, &tag).await.unwrap());

    assert!(a.destroy_data_key(&f.receipt(Action::Erase, "s-1").await).await.unwrap());
    eventually("the other custodian forgets an erased subject's tag key", || async {
        b.subject_tag_key_for(&hash, false).await.unwrap().is_none()
    })
    .await;
    assert!(!b.tag_is_subjects(&hash, &tag).await.unwrap());
    assert!(matches!(b.open_metadata(&s1, &sealed).await, Err(KeyError::Decrypt)));
    a.close().await;
    b.close().await;
}

/// The `application_name` of a custodian's listener for other custodians' erasures.
const LISTENER_NAME: &str = "clover-custodian-erasures";

/// A TCP proxy in front of the test PostgreSQL server that cuts custodians' erasure listeners
/// off, as a network fault would, and lets everything else through: while cut, it closes the
/// listeners' connections and drops new ones, which it tells apart by the `application_name`
/// in their startup packet (so its clients connect without TLS).
struct Proxy {
    at: std::net::SocketAddr,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    /// The listeners' connections passed through.
    listeners: Mutex<Vec<tokio::task::AbortHandle>>,
    /// How many listeners' connections it dropped.
    refused: AtomicU32,
}

impl Proxy {
    async fn start() -> Self {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = socket.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = socket.accept().await {
                tokio::spawn(pass(client, shared.clone()));
            }
        });
        Self { at, state }
    }

    /// The URL of `database` through the proxy.
    fn url(&self, database: &clover_testkit::TestDatabase) -> String {
        let (user, _) = server_authority();
        let (_, name) = database.url.rsplit_once('/').unwrap();
        format!("postgres://{user}@{}/{name}?sslmode=disable", self.at)
    }

    /// Closes the listeners' connections, and drops new ones until [`Proxy::mend`].
    fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for listener in self.state.listeners.lock().unwrap().drain(..) {
            listener.abort();
        }
    }

    fn mend(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Waits until a listener tried to connect again since the cut, and was dropped.
    async fn refused_a_listener(&self) {
        eventually("a listener tries to connect again", || async { self.state.refused.load(Ordering::SeqCst) > 0 })
            .await;
    }
}

/// The test server's user (and password, if any) and address.
fn server_authority() -> (String, String) {
    let server = clover_testkit::server();
    let (_, rest) = server.split_once("://").unwrap();
    let (authority, _) = rest.split_once('/').unwrap();
    let (user, address) = authority.rsplit_once('@').unwrap_or(("", authority));
    (user.to_owned(), address.to_owned())
}

/// Passes one connection through, unless it is a listener's and the proxy is cut.
async fn pass(mut client: tokio::net::TcpStream, state: Arc<ProxyState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The startup packet: its length (itself included), the protocol, then name/value pairs.
    let mut length = [0u8; 4];
    if client.read_exact(&mut length).await.is_err() {
        return;
    }
    let mut packet = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
    if client.read_exact(&mut packet).await.is_err() {
        return;
    }
    let listener = contains(&packet, format!("application_name\0{LISTENER_NAME}\0").as_bytes());
    if listener && state.cut.load(Ordering::SeqCst) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut server = tokio::net::TcpStream::connect(server_authority().1).await.unwrap();
    server.write_all(&length).await.unwrap();
    server.write_all(&packet).await.unwrap();
    let spliced = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    if listener {
        state.listeners.lock().unwrap().push(spliced.abort_handle());
        // Cut meanwhile: cut this one too.
        if state.cut.load(Ordering::SeqCst) {
            spliced.abort();
        }
    }
}

/// Two custodians on one PostgreSQL key store, the second one's erasure listener cut off by a
/// network fault while the first erases: the second hears nothing, yet hands out no erased key
/// and no erased subject's tag key, since while it does not listen it trusts none of its
/// caches (it reads the key store, which has none); once it listens again it has read every
/// erasure it missed (a receipt from before one is refused without asking the key store) and
/// flushed its caches.
#[tokio::test]
async fn an_erasure_made_while_a_custodian_was_not_listening_still_reaches_it() {
    let f = Fixture::keyring_on_postgres();
    let (a, store) = f.custodian(CacheOptions::default()).await;
    let StoreAt::Postgres(database) = &store else { unreachable!("a PostgreSQL fixture") };
    let proxy = Proxy::start().await;
    let b_store = KeyStore::Postgres(proxy.url(database));
    let b = Custodian::open(&b_store, region(), f.kek.clone(), f.index(), f.pseudonym_root(), CacheOptions::default())
        .await
        .unwrap();
    // b has the keys and tag keys of s-1, s-2 and s-3 cached.
    for id in ["s-1", "s-2", "s-3"] {
        a.create_data_key(&f.receipt(Action::Write, id).await).await.unwrap();
        a.subject_tag_key_for(&f.hash(id), true).await.unwrap().unwrap();
        b.data_key(&f.receipt(Action::Read, id).await).await.unwrap();
        b.data_key(&f.receipt(Action::Read, id).await).await.unwrap();
        assert!(b.journal().await.unwrap().last().unwrap().cached);
        assert!(b.subject_tag_key_for(&f.hash(id), false).await.unwrap().is_some());
    }
    // Logged before s-2's erasure, presented after.
    let old_read = f.receipt(Action::Read, "s-2").await;

    proxy.cut();
    // b saw its listener go (it tries to connect again, and cannot).
    proxy.refused_a_listener().await;
    assert!(a.destroy_data_key(&f.receipt(Action::Erase, "s-1").await).await.unwrap());
    assert!(a.destroy_data_key(&f.receipt(Action::Erase, "s-2").await).await.unwrap());
    // Not listening, b reads the key store, cache or not: at once, no key and no tag key.
    let refused = b.data_key(&f.receipt(Action::Read, "s-1").await).await;
    assert!(matches!(refused, Err(KeyError::NoDataKey)), "{refused:?}");
    assert!(b.subject_tag_key_for(&f.hash("s-1"), false).await.unwrap().is_none());
    // A subject not erased is still served, from the key store.
    b.data_key(&f.receipt(Action::Read, "s-3").await).await.unwrap();
    b.data_key(&f.receipt(Action::Read, "s-3").await).await.unwrap();
    assert!(!b.journal().await.unwrap().last().unwrap().cached, "a key came from the cache while not listening");

    proxy.mend();
    // Listening again, b caches again.
    eventually("the custodian listens again", || async {
        b.data_key(&f.receipt(Action::Read, "s-3").await).await.unwrap();
        b.journal().await.unwrap().last().unwrap().cached
    })
    .await;
    // It read s-2's erasure when it connected again (it has not asked the key store about s-2
    // since, and the notice was sent while it was cut off).
    let refused = b.data_key(&old_read).await;
    assert!(
        matches!(&refused, Err(KeyError::Receipt(m)) if m.contains("from before the subject's erasure")),
        "{refused:?}"
    );
    let refused = b.data_key(&f.receipt(Action::Read, "s-2").await).await;
    assert!(matches!(refused, Err(KeyError::NoDataKey)), "{refused:?}");
    assert!(b.subject_tag_key_for(&f.hash("s-2"), false).await.unwrap().is_none());
    a.close().await;
    b.close().await;
}
