//! A "singapore" PostgreSQL database of the test's own, whose table is owned and read by a
//! login role of its own with a password: the same rows as the files give the same counts and
//! root, and a run sees one snapshot.

use clover_model::Region;
use clover_repatriate::{Class, Mapping, OpenOptions, Position, Source, SourceSpec};
use clover_testkit::TestDatabase;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{MAPPING, Person, counts, expected_counts, file, people, people_jsonl, plan_of};

/// A test database and a login role that owns its tables; both dropped after the test.
pub struct Singapore {
    /// The role's URL (with its password).
    pub url: String,
    /// The administrator's URL of the database.
    pub admin_url: String,
    role: String,
    server: String,
    // Dropped after `Drop::drop` has dropped what the role owns.
    _db: TestDatabase,
}

impl Singapore {
    pub async fn create() -> Self {
        let db = TestDatabase::create().await;
        let role = format!("clover_src_{}", uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let server = clover_testkit::database::server();
        let mut admin = PgConnection::connect(&server).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let (_, host_and_db) = db.url.split_once('@').unwrap();
        let url = format!("postgres://{role}:{password}@{host_and_db}");
        Self { url, admin_url: db.url.clone(), role, server, _db: db }
    }

    /// Creates `table` (a quoted name) owned by the role and inserts `people`, as the
    /// administrator.
    pub async fn people_table(&self, table: &str, people: &[Person]) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        // Fields as text, so that bad JSON can be stored; the birth date as text, so that a
        // bad one can be; no key constraint, so that a key can be duplicated.
        let create = format!(
            "CREATE TABLE {table} (id bigint, user_id text, country text, born text, kind text, data text); \
             ALTER TABLE {table} OWNER TO {}",
            self.role
        );
        sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut admin).await.unwrap();
        for p in people {
            let insert = format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6)");
            sqlx::query(AssertSqlSafe(insert))
                .bind(p.id)
                .bind(p.user)
                .bind(p.country)
                .bind(p.born)
                .bind(p.kind)
                .bind(&p.data)
                .execute(&mut admin)
                .await
                .unwrap();
        }
        admin.close().await.unwrap();
    }
}

impl Drop for Singapore {
    fn drop(&mut self) {
        let (admin_url, server, role) = (self.admin_url.clone(), self.server.clone(), self.role.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP OWNED BY {role}"))).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
                if let Ok(mut conn) = PgConnection::connect(&server).await {
                    let _ =
                        sqlx::raw_sql(AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}"))).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

#[tokio::test]
async fn the_table_gives_the_counts_and_the_root_of_the_same_rows_as_json_lines() {
    let sg = Singapore::create().await;
    sg.people_table("people", &people()).await;
    let spec = SourceSpec::Postgres { url: sg.url.clone() };
    let plan = plan_of(&spec, MAPPING, OpenOptions { fetch_rows: 3 }).await;
    let expected: Vec<(String, [u64; 3])> = expected_counts().into_iter().map(|(c, n)| (c.to_owned(), n)).collect();
    assert_eq!(counts(&plan), expected);
    assert_eq!(plan.records, 3);
    assert_eq!(plan.unclassifiable.total, 9);
    // Reported by table and key; the password is not in the plan.
    let at: Vec<String> = plan.unclassifiable.shown.iter().map(|p| p.at.to_string()).collect();
    assert_eq!(at[0], "table \"people\", key \"2\"");
    assert!(plan.unclassifiable.shown[0].reason.to_string().contains("duplicate source key"));
    assert_eq!(at[1], "table \"people\", key \"5\"");
    assert!(!plan.source.contains("pw-") && plan.source.starts_with("postgres://clover_src_"), "{}", plan.source);

    let dir = tempfile::tempdir().unwrap();
    let jsonl =
        plan_of(&file(dir.path(), "people.jsonl", people_jsonl(&people())), MAPPING, OpenOptions::default()).await;
    assert_eq!(plan.root, jsonl.root);
    assert_eq!(counts(&plan), counts(&jsonl));

    // One field changed in the database changes the root.
    let mut admin = PgConnection::connect(&sg.admin_url).await.unwrap();
    sqlx::query("UPDATE people SET data = replace(data, 'Cork', 'Galway') WHERE id = 1")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let changed = plan_of(&spec, MAPPING, OpenOptions::default()).await;
    assert_ne!(changed.root, plan.root);
    assert_eq!(changed.records, 3);

    // A failed connection is an error that names the database without the password (the
    // server trusts loopback, so a database that does not exist makes it fail).
    let wrong = SourceSpec::Postgres { url: format!("{}_missing", sg.url) };
    let error = Source::open(&wrong, Mapping::parse(MAPPING).unwrap(), Region::new("eu").unwrap()).await.unwrap_err();
    let message = format!("{error} {:?}", std::error::Error::source(&error).map(ToString::to_string));
    assert!(message.contains("cannot connect") && message.contains("_missing"), "{message}");
    assert!(!message.contains("pw-"), "{message}");
}

#[tokio::test]
async fn a_run_sees_one_snapshot_of_every_table() {
    let sg = Singapore::create().await;
    // A name that needs quoting, and a second table read after it.
    sg.people_table("\"people \"\"sg\"\"\"", &people()[..5]).await;
    let mut admin = PgConnection::connect(&sg.admin_url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE contacts (key text, subject text, region text, phone text, verified boolean, since int); \
         ALTER TABLE contacts OWNER TO {}; \
         INSERT INTO contacts VALUES ('c-1', 'u-1', 'eu', '+353 1 555 0100', true, 2019), ('c-2', 'u-3', 'sg', NULL, false, NULL)",
        sg.role
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mapping = r#"
        [countries]
        IE = "eu"
        NO = "eu"
        SG = "sg"
        US = "us"

        [[tables]]
        table = "people \"sg\""
        source_key = "id"
        subject = "user_id"
        country = "country"
        birth_date = "born"
        category_column = "kind"
        fields = "data"

        [[tables]]
        schema = "public"
        table = "contacts"
        source_key = "key"
        subject = "subject"
        home_region = "region"
        category = "contact"
        field_columns = ["phone", "verified", "since"]
    "#;
    let spec = SourceSpec::Postgres { url: sg.url.clone() };
    let mut source = Source::open_with(
        &spec,
        Mapping::parse(mapping).unwrap(),
        Region::new("eu").unwrap(),
        OpenOptions { fetch_rows: 1 },
    )
    .await
    .unwrap();
    // Written after the source was opened, and again after the first row was read: neither is
    // in the run.
    sqlx::raw_sql("INSERT INTO \"people \"\"sg\"\"\" VALUES (100, 'u-100', 'IE', NULL, 'profile', '{}')")
        .execute(&mut admin)
        .await
        .unwrap();
    let first = source.next_row().await.unwrap().unwrap();
    assert_eq!(first.position, Position::Key { table: "\"people \\\"sg\\\"\"".into(), key: Some("1".into()), row: 1 });
    sqlx::raw_sql(
        "INSERT INTO \"people \"\"sg\"\"\" VALUES (101, 'u-101', 'IE', NULL, 'profile', '{}'); \
         INSERT INTO contacts VALUES ('c-3', 'u-9', 'eu', '1', true, 1); DELETE FROM contacts WHERE key = 'c-2'",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let mut rows = vec![first];
    while let Some(row) = source.next_row().await.unwrap() {
        rows.push(row);
    }
    let keys: Vec<String> = rows
        .iter()
        .map(|r| match &r.position {
            Position::Key { key, .. } => key.clone().unwrap_or_default(),
            Position::Line(_) => panic!("a database row has a key"),
        })
        .collect();
    assert_eq!(keys, ["1", "2", "2", "3", "4", "c-1", "c-2"]);
    let classes: Vec<&Class> = rows.iter().map(|r| &r.class).collect();
    assert_eq!(classes[5], &Class::Region);
    assert_eq!(classes[6], &Class::Elsewhere(Region::new("sg").unwrap()));
    // Field columns come as their JSON: text, a boolean, a number; NULL as null.
    let contact = rows[5].record.as_ref().unwrap();
    assert_eq!(
        serde_json::Value::Object(contact.fields.as_map().clone()),
        serde_json::json!({"phone": "+353 1 555 0100", "verified": true, "since": 2019})
    );
    let text = String::from_utf8(clover_repatriate::canonical_bytes(contact)).unwrap();
    assert_eq!(
        text,
        r#"{"category":"contact","fields":{"phone":"+353 1 555 0100","since":2019,"verified":true},"source_key":"c-1","subject":"u-1"}"#
    );
    admin.close().await.unwrap();
}
