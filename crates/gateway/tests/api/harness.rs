//! `TestApp`: a real boundary on 127.0.0.1:0 in a fresh data directory, driven over HTTP.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clover_event::{Event, EventKind};
use clover_gateway::identity::{Claims, DevIssuer};
use clover_gateway::{Boundary, Config, DataDir};
use clover_log::Receipt;
use clover_model::{Action, PrincipalKind, RecordId, SubjectId};
use clover_policy::pack::{PackPrincipal, PackRequest, PackResource, PolicyPack};
use clover_policy::{Permit, Verdict};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::oneshot;

pub use clover_testkit::sites::{DUBLIN, DUBLIN_2, HAMAR, SINGAPORE, UNKNOWN, VIRGINIA};

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub boundary: Arc<Boundary>,
    issuer: DevIssuer,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        configure(&mut config);
        DataDir::new(&config.data_dir).init(&config.region).unwrap();
        Self::open(dir, config).await
    }

    /// Stops the server and starts a new one on the same data directory and configuration, as a
    /// restarted process would.
    pub async fn restart(self) -> Self {
        let config = self.boundary.config().clone();
        let dir = self.stop().await;
        Self::open(dir, config).await
    }

    async fn open(dir: tempfile::TempDir, config: Config) -> Self {
        let issuer = DataDir::new(&config.data_dir).issuer().unwrap();
        let boundary = Arc::new(Boundary::open(config).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(clover_gateway::serve(boundary.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self { dir, addr, boundary, issuer, shutdown: Some(tx), task: Some(task) }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.boundary.config().data_dir.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client whose requests come from `from` (a loopback address of a configured site).
    pub fn client(&self, from: &str) -> reqwest::Client {
        reqwest::Client::builder().local_address(from.parse::<IpAddr>().unwrap()).no_proxy().build().unwrap()
    }

    pub fn claims(&self, region: &str, site: &str, ttl: i64) -> Claims {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            iss: "clover-dev".into(),
            aud: "clover".into(),
            sub: "ana".into(),
            kind: PrincipalKind::Employee,
            region: region.into(),
            site: site.into(),
            roles: vec!["support".into(), "legal".into()],
            iat: now,
            exp: now + ttl,
        }
    }

    pub fn mint(&self, claims: &Claims) -> String {
        self.issuer.mint(claims).unwrap()
    }

    /// A token for an EU employee at dublin-1.
    pub fn token(&self) -> String {
        self.mint(&self.claims("eu", "dublin-1", 3600))
    }

    /// A data subject's own token (kind `subject`, no site, no roles).
    pub fn subject_token(&self, subject: &str) -> String {
        let mut claims = self.claims("eu", clover_gateway::identity::NO_SITE, 3600);
        claims.sub = subject.into();
        claims.kind = PrincipalKind::Subject;
        claims.roles = Vec::new();
        self.mint(&claims)
    }

    /// A token for an EU member of the privacy team (role `privacy`) at dublin-1.
    pub fn privacy_token(&self) -> String {
        let mut claims = self.claims("eu", "dublin-1", 3600);
        claims.sub = "pia".into();
        claims.roles = vec!["privacy".into()];
        self.mint(&claims)
    }

    /// A token for an EU key custodian (role `key-custodian`) at `site`.
    pub fn key_custodian_token(&self, site: &str) -> String {
        let mut claims = self.claims("eu", site, 3600);
        claims.roles = vec!["key-custodian".into()];
        self.mint(&claims)
    }

    pub async fn put_subject(&self, subject: &str) -> reqwest::Response {
        self.client(DUBLIN)
            .put(self.url(&format!("/v1/subjects/{subject}")))
            .bearer_auth(self.token())
            .json(&serde_json::json!({"home_region": "eu", "birth_date": "2011-05-01"}))
            .send()
            .await
            .unwrap()
    }

    /// Reads `record` from `from` for support, with `ticket` as its justification.
    pub async fn read_with_ticket(&self, from: &str, record: &str, ticket: &str) -> reqwest::Result<reqwest::Response> {
        self.client(from)
            .get(self.url(&format!("/v1/records/{record}")))
            .bearer_auth(self.token())
            .header("X-Clover-Purpose", "support")
            .header("X-Clover-Justification", ticket)
            .send()
            .await
    }

    pub async fn post_record(&self, subject: &str, category: &str, fields: Value) -> reqwest::Response {
        self.client(DUBLIN)
            .post(self.url(&format!("/v1/subjects/{subject}/records")))
            .bearer_auth(self.token())
            .json(&serde_json::json!({"category": category, "fields": fields}))
            .send()
            .await
            .unwrap()
    }

    /// Registers `subject` and writes one record; returns the record id.
    pub async fn seed(&self, subject: &str, fields: Value) -> String {
        assert!(self.put_subject(subject).await.status().is_success());
        let response = self.post_record(subject, "profile", fields).await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
    }

    /// Reads a record as an agent with a declared purpose (`legal`, which every category
    /// declares) and a ticket, so that only where the call comes from decides.
    pub async fn get_record(&self, from: &str, record: &str) -> reqwest::Response {
        self.client(from)
            .get(self.url(&format!("/v1/records/{record}")))
            .bearer_auth(self.token())
            .header("X-Clover-Purpose", "legal")
            .header("X-Clover-Justification", "CASE-1")
            .send()
            .await
            .unwrap()
    }

    pub async fn db(&self) -> sqlx::SqlitePool {
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("clover.db")).read_only(true);
        sqlx::SqlitePool::connect_with(options).await.unwrap()
    }

    /// Every stored row, as text, for "nothing changed" assertions.
    pub async fn dump(&self) -> Vec<String> {
        let pool = self.db().await;
        let mut rows = Vec::new();
        for row in sqlx::query(
            "SELECT subject_id || ' ' || home_region || ' ' || hex(attributes) || ' ' || hex(metadata) || ' ' \
             || created_at FROM subjects ORDER BY subject_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        {
            rows.push(format!("subject {}", row.get::<String, _>(0)));
        }
        for row in sqlx::query(
            "SELECT record_id || ' ' || subject_id || ' ' || category || ' ' || home_region || ' ' || version \
             || ' ' || hex(ciphertext) || ' ' || created_at FROM records ORDER BY record_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        {
            rows.push(format!("record {}", row.get::<String, _>(0)));
        }
        pool.close().await;
        rows
    }

    /// The raw stored ciphertext of a record.
    pub async fn ciphertext(&self, record: &str) -> Vec<u8> {
        let pool = self.db().await;
        let row = sqlx::query("SELECT ciphertext FROM records WHERE record_id = ?")
            .bind(record)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        row.get(0)
    }

    /// The raw wrapped data key of a subject, as the custodian's key store holds it.
    pub async fn wrapped_key(&self, subject: &str) -> Vec<u8> {
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("custody").join("keys.db"));
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let row = sqlx::query("SELECT wrapped FROM data_keys WHERE subject = ?")
            .bind(self.boundary.subject_hash(&subject.parse().unwrap()))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        row.get(0)
    }

    /// A consistent copy of the data store (not the custodian's key store), as a backup
    /// would take it: `VACUUM INTO` a file in `dir`.
    pub async fn backup_store(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("clover-backup.db");
        let pool = self.db().await;
        sqlx::query("VACUUM INTO ?").bind(path.to_str().unwrap().to_owned()).execute(&pool).await.unwrap();
        pool.close().await;
        path
    }

    /// A copy of the whole data directory as a file-level backup of it would hold it, under
    /// `dir/data`: the data store and the key store (each copied consistently, `VACUUM INTO`),
    /// and the keyring and the passphrase file (when there is one) as they are.
    pub async fn backup_data_dir(&self, dir: &Path) -> PathBuf {
        let backup = dir.join("data");
        std::fs::create_dir_all(backup.join("custody")).unwrap();
        for database in ["clover.db", "custody/keys.db"] {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join(database));
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let to = backup.join(database).to_str().unwrap().to_owned();
            sqlx::query("VACUUM INTO ?").bind(to).execute(&pool).await.unwrap();
            pool.close().await;
        }
        for file in ["keyring.json", "passphrase"] {
            if self.data_dir().join(file).exists() {
                std::fs::copy(self.data_dir().join(file), backup.join(file)).unwrap();
            }
        }
        backup
    }

    /// Runs `sql` straight on the database, as an attacker with disk access could, binding
    /// `blob` (if any) and then `id`.
    pub async fn tamper(&self, sql: &'static str, blob: Option<&[u8]>, id: &str) {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("clover.db"));
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let mut query = sqlx::query(sql);
        if let Some(blob) = blob {
            query = query.bind(blob.to_vec());
        }
        let done = query.bind(id.to_owned()).execute(&pool).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "{sql}");
        pool.close().await;
    }

    /// A permit for an in-region write on `subject`, as the policy pack gives one.
    pub fn permit(&self, subject: &SubjectId) -> Permit {
        let request = PackRequest {
            boundary_region: "eu".into(),
            principal: PackPrincipal {
                kind: PrincipalKind::Employee,
                id: "ana".into(),
                home_region: "eu".into(),
                site: "dublin-1".into(),
                roles: vec![],
            },
            action: Action::Write,
            resource: PackResource::Subject { id: subject.to_string(), minor: false, home_region: "eu".into() },
            origin: Some(("dublin-1".into(), "eu".into())),
            purpose: None,
            purpose_declared: false,
            purpose_allowed_for_category: false,
            purpose_allows_transfer: false,
            purpose_role_ok: false,
            category_role_ok: false,
            has_justification: false,
            approved: false,
            subjects_touched: 1,
            bulk_threshold: 50,
            destination: None,
        };
        match PolicyPack::default_pack().unwrap().verdict(&request, subject) {
            Verdict::Allowed(permit) => permit,
            Verdict::Denied(d) => panic!("{d:?}"),
        }
    }

    /// A receipt for an in-region access to `subject`, logged like the gateway logs one.
    pub async fn receipt(&self, subject: &SubjectId) -> Receipt {
        self.record_receipt(subject, &RecordId::random(), "profile").await
    }

    /// A subject tag of `subject`'s, made with their tag key as the boundary's entries' are (a
    /// random one if they have none): what the custodian checks a receipt's entry names.
    pub async fn tag(&self, subject: &SubjectId) -> clover_event::SubjectTag {
        match self.boundary.custody().subject_tag_key(subject, false).await.unwrap() {
            Some(key) => key.tag().unwrap(),
            None => clover_event::SubjectTag::random().unwrap(),
        }
    }

    /// A receipt for version 1 of `record` (of `category`) of `subject` (an allowed write, what
    /// [`TestApp::permit`] allows), its annex naming the record as the boundary's do.
    pub async fn record_receipt(&self, subject: &SubjectId, record: &RecordId, category: &str) -> Receipt {
        let record = record.to_string();
        let annex = clover_event::Annex::new(None, None, None, Some(&record), Some(subject.as_str()))
            .unwrap()
            .with_version(Some(1));
        let event = Event {
            v: clover_event::EVENT_VERSION,
            kind: EventKind::Write,
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            principal: None,
            origin: None,
            action: Some("write".into()),
            subject: Some(self.tag(subject).await),
            category: Some(category.into()),
            decision: Some(clover_event::EventDecision { effect: "allow".into(), view: None, policies: Vec::new() }),
            purpose: Some("test".into()),
            annex: Some(annex.commitment()),
            detail: None,
            transfer: None,
            government_request: None,
        };
        self.boundary.log().append_permitted(&event, self.permit(subject)).await.unwrap().with_annex(annex)
    }

    /// Stops the server, waiting for requests in flight; hands back the directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Every file under `dir`, recursively, with its bytes.
/// Every entry of the log, decoded as JSON.
pub async fn log_entries(log: &clover_log::Log) -> Vec<Value> {
    let mut entries = Vec::new();
    for index in 0..log.size() {
        entries.push(serde_json::from_slice(&log.entry(index).await.unwrap()).unwrap());
    }
    entries
}

pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            // SQLite removes its -wal and -shm files when the last connection closes.
            match std::fs::read(&path) {
                Ok(bytes) => out.push((path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    out
}

/// The files under `dir` that contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
        .collect()
}

/// Everything the log serves without a token, by path: the checkpoint, and every entry bundle
/// and hash tile of the tree it signs.
pub async fn served_log(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    use clover_tlog::tile::{TILE_WIDTH, Tile};
    let client = app.client(DUBLIN);
    let checkpoint = client.get(app.url("/log/checkpoint")).send().await.unwrap().text().await.unwrap();
    let note = clover_tlog::note::Note::parse(&checkpoint).unwrap();
    let size = clover_tlog::checkpoint::Checkpoint::parse(&note.text).unwrap().size;
    let mut served = vec![("checkpoint".to_owned(), checkpoint.into_bytes())];
    // Entry bundles hold the entries; hash tiles at level L the hashes of tree level 8·L.
    let mut levels = vec![(None, size)];
    for level in 0u8.. {
        let hashes = size >> (8 * u32::from(level));
        if hashes == 0 {
            break;
        }
        levels.push((Some(level), hashes));
    }
    for (level, count) in levels {
        for index in 0..count.div_ceil(TILE_WIDTH) {
            let width = u16::try_from((count - index * TILE_WIDTH).min(TILE_WIDTH)).unwrap();
            let path = Tile { level, index, width }.path();
            let response = client.get(app.url(&format!("/log/{path}"))).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            served.push((path, response.bytes().await.unwrap().to_vec()));
        }
    }
    served
}

/// Sends `request` as it is, bytes on a new connection from `from` (no client normalises its
/// path), and reads the answer until the server closes the connection: its status, its head and
/// its body.
pub async fn raw(app: &TestApp, from: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(answer[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[end + 4..].to_vec())
}

/// Asserts a problem+json answer and returns its body.
pub async fn problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    assert_eq!(
        response.headers().get("content-type").unwrap().to_str().unwrap(),
        "application/problem+json",
        "content type"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("urn:clover:problem:{kind}"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    body
}

/// The private annex of a logged entry (format 2), as the region's store keeps it.
pub async fn annex_of(boundary: &clover_gateway::Boundary, entry: &Value) -> clover_event::Annex {
    let commitment = entry["annex"].as_str().unwrap_or_else(|| panic!("no annex: {entry}"));
    let annex = boundary.store().annex(commitment).await.unwrap().unwrap_or_else(|| panic!("no annex kept: {entry}"));
    assert_eq!(annex.commitment(), commitment, "the annex matches its entry");
    annex
}

/// The opening of the annex of the entry at `index` to its record version: what the boundary
/// sends its custodian with a receipt.
pub async fn opening_of(boundary: &clover_gateway::Boundary, entry: &[u8]) -> Option<clover_event::RecordOpening> {
    let entry: Value = serde_json::from_slice(entry).ok()?;
    entry["annex"].as_str()?;
    annex_of(boundary, &entry).await.record_opening()
}
