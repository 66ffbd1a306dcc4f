//! Data subjects as callers: who read my data (with proofs), my erasure (with its certificate),
//! and what a subject's token may not do.

use base64::Engine as _;
use clover_gateway::subjects::certificate::{self, Certificate, subject_commitment};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::Note;
use clover_tlog::tree::verify_inclusion;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, UNKNOWN, problem};

/// Checks every proof of a `/v1/me/accesses` answer against its checkpoint, signed by the log's
/// key; returns how many entries had one.
fn check_proofs(app: &TestApp, body: &Value) -> usize {
    let note = Note::parse(body["checkpoint"].as_str().unwrap()).unwrap();
    note.verify(app.boundary.log_vkey()).unwrap();
    let checkpoint = Checkpoint::parse(&note.text).unwrap();
    assert_eq!(body["tree_size"], checkpoint.size);
    let mut proven = 0;
    for entry in body["entries"].as_array().unwrap() {
        let index = entry["index"].as_u64().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(entry["entry"].as_str().unwrap()).unwrap();
        assert_eq!(leaf_hash(&bytes).to_base64(), entry["leaf_hash"]);
        match entry["proof"].as_array() {
            Some(path) => {
                let path: Vec<Hash> = path.iter().map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap()).collect();
                verify_inclusion(&leaf_hash(&bytes), index, checkpoint.size, &path, &checkpoint.root).unwrap();
                proven += 1;
            }
            None => assert!(index >= checkpoint.size, "entry {index} is in the checkpoint's tree but has no proof"),
        }
    }
    proven
}

#[tokio::test]
async fn a_subject_sees_who_read_their_data_by_role_not_name_with_proofs_from_anywhere() {
    let app = TestApp::start().await;
    let record = app.seed("u-1001", json!({"name": "Aoife"})).await;
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);
    // Someone else's data, read too: not in u-1001's answer.
    let other = app.seed("u-2002", json!({"name": "Bram"})).await;
    assert_eq!(app.get_record(DUBLIN, &other).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    // From an address that belongs to no site (a person abroad): their own data, allowed.
    let response = app
        .client(UNKNOWN)
        .get(app.url("/v1/me/accesses"))
        .bearer_auth(app.subject_token("u-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["subject_id"], "u-1001");
    assert_eq!(body["decision"]["effect"], "allow");
    assert_eq!(body["decision"]["policies"], json!(["subjects-act-on-their-own-data"]));
    let text = body.to_string();
    assert!(!text.contains("\"ana\""), "an employee's name is never shown to a subject: {text}");
    assert!(!text.contains("Bram") && !text.contains("u-2002"), "another subject's entries are not shown");

    let entries = body["entries"].as_array().unwrap();
    let read = entries.iter().find(|e| e["action"] == "read").expect("the read of their record");
    assert_eq!(read["kind"], "access");
    assert_eq!(read["decision"], "allow");
    assert_eq!(read["view"], "full");
    assert_eq!(read["principal_kind"], "employee");
    assert_eq!(read["principal_region"], "eu");
    assert_eq!(read["origin"], json!({"site": "dublin-1", "region": "eu"}));
    assert_eq!(read["purpose"], "legal");
    assert_eq!(read["roles"], json!(["legal"]), "the roles that may declare the purpose");
    assert_eq!(read["category"], "profile");
    assert!(entries.iter().any(|e| e["action"] == "write"), "the writes that registered them and their record");
    // This listing itself, by the subject, from nowhere known.
    let own = entries.last().unwrap();
    assert_eq!(own["index"], body["log_index"]);
    assert_eq!(own["action"], "list-accesses");
    assert_eq!(own["principal_kind"], "subject");
    assert_eq!(own["origin"], json!({"site": null, "region": null}));
    assert!(check_proofs(&app, &body) >= 3, "the read and the writes are proven");
}

#[tokio::test]
async fn a_subject_token_acts_on_its_own_data_only_and_is_refused_and_logged_elsewhere() {
    let app = TestApp::start().await;
    let record = app.seed("u-1001", json!({"name": "Aoife"})).await;
    app.seed("u-2002", json!({"name": "Bram"})).await;
    let mallory = app.subject_token("u-2002");

    // Another subject's accesses, erasure, record: refused by policy, and logged.
    for (method, path) in [
        (reqwest::Method::GET, "/v1/subjects/u-1001/accesses".to_owned()),
        (reqwest::Method::DELETE, "/v1/subjects/u-1001".to_owned()),
    ] {
        let response = app.client(DUBLIN).request(method, app.url(&path)).bearer_auth(&mallory).send().await.unwrap();
        let body = problem(response, 403, "forbidden").await;
        assert!(body["decision"]["policies"].as_array().unwrap().contains(&json!("subjects-only-their-own-data")));
        assert!(body["log_index"].as_u64().is_some(), "the refusal is logged");
    }
    // A record, even with a purpose and from a site of the region: records are read by staff
    // (the policy would refuse it too: `subjects-only-their-own-data`).
    let response = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(&mallory)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    problem(response, 403, "staff-only").await;
    // A subject that does not exist: the same refusal, nothing learnt of existence.
    let response =
        app.client(DUBLIN).delete(app.url("/v1/subjects/u-nobody")).bearer_auth(&mallory).send().await.unwrap();
    problem(response, 403, "forbidden").await;

    // Not even their own registration, from a site of the region: a new birth date would lift a
    // minor's rules.
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-2002"))
        .bearer_auth(&mallory)
        .json(&json!({"home_region": "eu", "birth_date": "1980-01-01"}))
        .send()
        .await
        .unwrap();
    let body = problem(response, 403, "forbidden").await;
    assert!(body["decision"]["policies"].as_array().unwrap().contains(&json!("subjects-only-their-own-data")));
    // The staff's endpoints refuse a subject's token before deciding anything.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/approvals"),
        (reqwest::Method::POST, "/v1/transfers"),
        (reqwest::Method::GET, "/v1/keys"),
        (reqwest::Method::GET, "/v1/requests/subjects"),
        (reqwest::Method::POST, "/v1/repatriation/jobs/job-1/records"),
    ] {
        let response = app
            .client(DUBLIN)
            .request(method, app.url(path))
            .bearer_auth(&mallory)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        problem(response, 403, "staff-only").await;
    }

    // u-1001's data is untouched.
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);

    // /v1/me with an employee's token: not a subject.
    let response = app.client(DUBLIN).get(app.url("/v1/me/accesses")).bearer_auth(app.token()).send().await.unwrap();
    problem(response, 403, "subject-token-required").await;
    // Without a token at all.
    let response = app.client(DUBLIN).get(app.url("/v1/me/accesses")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_subjects_public_entries_do_not_link_to_each_other() {
    let app = TestApp::start().await;
    app.seed("u-1001", json!({"name": "Aoife"})).await;
    let token = app.subject_token("u-1001");
    let mut pseudonyms = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let response = app.client(SINGAPORE).get(app.url("/v1/me/accesses")).bearer_auth(&token).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        let index = body["log_index"].as_u64().unwrap();
        let entry: Value = serde_json::from_slice(&app.boundary.log().entry(index).await.unwrap()).unwrap();
        assert_eq!(entry["principal"]["kind"], "subject");
        assert!(!entry.to_string().contains("u-1001"));
        pseudonyms.insert(entry["principal"]["pseudonym"].as_str().unwrap().to_owned());
    }
    assert_eq!(pseudonyms.len(), 3, "a subject's own calls get a fresh pseudonym each");
}

#[tokio::test]
async fn a_subject_erases_their_own_data_and_gets_a_certificate_that_verifies() {
    let app = TestApp::start().await;
    let first = app.seed("u-1001", json!({"name": "Aoife"})).await;
    app.post_record("u-1001", "content", json!({"text": "a post"})).await;
    app.post_record("u-1001", "content", json!({"text": "another"})).await;

    let response =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-1001")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["erased_records"], 3);
    assert_eq!(body["categories"], json!({"content": 2, "profile": 1}));
    let certificate: Certificate = serde_json::from_value(body["certificate"].clone()).unwrap();
    let salt = body["subject_salt"].as_str().unwrap();
    assert_eq!(certificate.log_index, body["log_index"]);

    let vkey = app.boundary.log_vkey();
    let verified = certificate::verify(&certificate, vkey, &[], Some(("u-1001", salt))).unwrap();
    assert_eq!(verified.fact("records"), Some("3"));
    assert_eq!(verified.fact("categories"), Some("content=2,profile=1"));
    assert_eq!(verified.fact("data-key"), Some("destroyed"));
    assert_eq!(verified.fact("subject"), Some(format!("sha256:{}", subject_commitment(salt, "u-1001")).as_str()));
    assert!(!certificate.statement.contains("u-1001"), "the certificate names the subject by commitment only");
    // Someone else's id, or another salt, does not open it.
    assert!(certificate::verify(&certificate, vkey, &[], Some(("u-2002", salt))).is_err());
    // A statement changed after signing, an entry swapped, a proof cut: refused.
    let mut forged = certificate.clone();
    forged.statement = forged.statement.replace("records 3", "records 0");
    assert!(certificate::verify(&forged, vkey, &[], None).is_err());
    let mut forged = certificate.clone();
    forged.log_index = 0;
    assert!(certificate::verify(&forged, vkey, &[], None).is_err());
    let mut forged = certificate.clone();
    forged.inclusion_proof.pop();
    assert!(certificate::verify(&forged, vkey, &[], None).is_err());

    // The region keeps a copy, without the salt.
    let kept = app.boundary.store().certificate(&certificate.certificate_id).await.unwrap().unwrap();
    assert!(!kept.document.contains(salt));
    assert_eq!(kept.kind, "erasure");

    // Gone: the record, the subject's listing, a second erasure.
    assert_eq!(app.get_record(DUBLIN, &first).await.status(), 404);
    let again =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-1001")).send().await.unwrap();
    problem(again, 404, "not-found").await;
    let response =
        app.client(UNKNOWN).get(app.url("/v1/me/accesses")).bearer_auth(app.subject_token("u-1001")).send().await;
    let body: Value = response.unwrap().json().await.unwrap();
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only this listing is theirs now: the erased annexes are unlinked: {entries:?}");
}

#[tokio::test]
async fn an_erasure_under_a_legal_hold_answers_with_the_hold_and_erases_nothing() {
    let app = TestApp::start().await;
    let record = app.seed("u-1001", json!({"name": "Aoife"})).await;
    let hash = app.boundary.subject_hash(&clover_model::SubjectId::new("u-1001".to_owned()).unwrap());
    app.boundary.store().place_legal_hold(&hash, "PO-2026-17").await.unwrap();

    let response =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-1001")).send().await.unwrap();
    let body = problem(response, 409, "held").await;
    // The subject is not told of the hold (it may come with a gag): only that a person answers.
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains("PO-2026-17") && !detail.contains("hold"), "{body}");
    assert!(detail.contains("tracked as request sr-"), "{body}");
    assert!(body["log_index"].as_u64().is_some());
    // The region's staff see the hold's reference; asking again opens no second request.
    let response =
        app.client(DUBLIN).delete(app.url("/v1/subjects/u-1001")).bearer_auth(app.token()).send().await.unwrap();
    let body = problem(response, 409, "held").await;
    assert!(body["detail"].as_str().unwrap().contains("PO-2026-17"), "{body}");
    let again =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-1001")).send().await.unwrap();
    problem(again, 409, "held").await;
    // Nothing erased.
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);
    // Someone the policy refuses learns nothing of the hold.
    let response = app
        .client(DUBLIN)
        .delete(app.url("/v1/subjects/u-1001"))
        .bearer_auth(app.subject_token("u-2002"))
        .send()
        .await
        .unwrap();
    let refused = problem(response, 403, "forbidden").await;
    assert!(!refused.to_string().contains("PO-2026-17"));
    // The erasure is tracked for a person.
    let requests = app.boundary.store().subject_requests(Some("open")).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].kind, "erasure");
    assert_eq!(requests[0].reference, "hold PO-2026-17");
    assert_eq!(requests[0].subject_hash, hash);
}

/// Reads a ZIP archive's files.
pub(crate) fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut content).unwrap();
        let name: String = file.name().unwrap().into_owned();
        files.insert(name, content);
    }
    files
}

/// Checks an export's signed manifest against its files; returns the manifest's text.
pub(crate) fn check_manifest(app: &TestApp, files: &std::collections::BTreeMap<String, Vec<u8>>) -> String {
    let manifest = Note::parse(std::str::from_utf8(&files["manifest.txt"]).unwrap()).unwrap();
    manifest.verify(app.boundary.log_vkey()).unwrap();
    let mut listed = 0;
    for line in manifest.text.lines().filter_map(|l| l.strip_prefix("file ")) {
        let (digest, name) = line.split_once(' ').unwrap();
        assert_eq!(clover_event::sha256_hex(&files[name]), digest, "{name}");
        listed += 1;
    }
    assert_eq!(listed, files.len() - 1, "every file but the manifest is listed");
    manifest.text
}

#[tokio::test]
async fn a_subject_exports_their_data_as_a_signed_zip_and_as_age_for_the_age_tool() {
    let app = TestApp::start().await;
    app.seed("u-1001", json!({"display_name": "Aoife <b>Ní</b> Bhriain"})).await;
    for i in 0..3 {
        app.post_record("u-1001", "content", json!({"text": format!("post {i}")})).await;
    }
    app.seed("u-2002", json!({"display_name": "Bram"})).await;
    let token = app.subject_token("u-1001");

    let response =
        app.client(UNKNOWN).post(app.url("/v1/me/export")).bearer_auth(&token).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    assert_eq!(response.headers()["x-clover-export-records"], "4");
    let sha = response.headers()["x-clover-export-sha256"].to_str().unwrap().to_owned();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(clover_event::sha256_hex(&bytes), sha);
    let files = unzip(&bytes);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["accesses.json", "manifest.txt", "records/content.json", "records/profile.json", "summary.html"]
    );
    let content: Value = serde_json::from_slice(&files["records/content.json"]).unwrap();
    assert_eq!(content.as_array().unwrap().len(), 3);
    assert_eq!(content[0]["category"], "content");
    assert!(content[0]["fields"]["text"].as_str().unwrap().starts_with("post "));
    let profile: Value = serde_json::from_slice(&files["records/profile.json"]).unwrap();
    assert_eq!(profile[0]["fields"]["display_name"], "Aoife <b>Ní</b> Bhriain");
    let all = files.values().map(|f| String::from_utf8_lossy(f).into_owned()).collect::<String>();
    assert!(!all.contains("Bram") && !all.contains("u-2002"), "another subject's data is not in it");
    let summary = String::from_utf8(files["summary.html"].clone()).unwrap();
    assert!(summary.contains("Aoife &lt;b&gt;") || !summary.contains("<b>Ní"), "field values are escaped");
    assert!(summary.contains("content") && summary.contains("profile"));
    let manifest = check_manifest(&app, &files);
    assert!(manifest.starts_with("clover/subject-export/v1\n"));
    assert!(manifest.contains("records 4\n"));
    // The history inside carries proofs.
    let history: Value = serde_json::from_slice(&files["accesses.json"]).unwrap();
    assert!(check_proofs(&app, &history) >= 1);
    // Every record opened is its own log entry, about the subject, by the subject.
    let exports = history["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "export-subject").count();
    assert!(exports >= 5, "the decision and four openings: {exports}");

    // Encrypted to the subject's own age key: the standard age tool opens it.
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("key.txt");
    let made =
        std::process::Command::new("age-keygen").arg("-o").arg(&identity).output().expect("age-keygen (Debian's age)");
    assert!(made.status.success());
    let recipient = String::from_utf8(made.stderr).unwrap().trim().trim_start_matches("Public key: ").to_owned();
    let response = app
        .client(UNKNOWN)
        .post(app.url("/v1/me/export"))
        .bearer_auth(&token)
        .json(&json!({"age_recipient": recipient}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let sealed = response.bytes().await.unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    let path = keys.path().join("export.zip.age");
    std::fs::write(&path, &sealed).unwrap();
    let opened = std::process::Command::new("age").arg("-d").arg("-i").arg(&identity).arg(&path).output().unwrap();
    assert!(opened.status.success(), "{}", String::from_utf8_lossy(&opened.stderr));
    let files = unzip(&opened.stdout);
    assert_eq!(serde_json::from_slice::<Value>(&files["records/content.json"]).unwrap().as_array().unwrap().len(), 3);
    check_manifest(&app, &files);

    // Nothing is left behind in the data directory.
    let exports = app.data_dir().join("exports");
    assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 0, "no archive is kept");
}

#[tokio::test]
async fn bad_exports_are_refused_clearly_and_leave_nothing() {
    let app = TestApp::start_with(|c| c.subjects.max_export_records = 2).await;
    app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    let token = app.subject_token("u-1001");
    let post = |body: Value, token: String| {
        let app = &app;
        async move {
            app.client(UNKNOWN).post(app.url("/v1/me/export")).bearer_auth(token).json(&body).send().await.unwrap()
        }
    };
    // A recipient that does not parse; an unknown field.
    let body = problem(post(json!({"age_recipient": "age1notakey"}), token.clone()).await, 422, "invalid-body").await;
    assert!(body["detail"].as_str().unwrap().contains("age_recipient"));
    problem(post(json!({"recipient": "x"}), token.clone()).await, 422, "invalid-body").await;
    // Over the limit: refused and logged.
    app.post_record("u-1001", "content", json!({"text": "one"})).await;
    app.post_record("u-1001", "content", json!({"text": "two"})).await;
    let body = problem(post(json!({}), token.clone()).await, 422, "export-too-large").await;
    assert!(body["log_index"].as_u64().is_some());
    // Someone never registered (or erased): nothing held, logged.
    let body = problem(post(json!({}), app.subject_token("u-nobody")).await, 404, "nothing-held").await;
    assert!(body["log_index"].as_u64().is_some());
    // Staff without the privacy role, or without a ticket: refused by policy.
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/subjects/u-1001/export"))
        .bearer_auth(app.token())
        .header("X-Clover-Justification", "DSAR-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(response, 403, "forbidden").await;
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/subjects/u-1001/export"))
        .bearer_auth(app.privacy_token())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(response, 403, "forbidden").await;
    // Another subject's token on the staff endpoint.
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/subjects/u-1001/export"))
        .bearer_auth(app.subject_token("u-2002"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(response, 403, "forbidden").await;
    let exports = app.data_dir().join("exports");
    assert!(!exports.exists() || std::fs::read_dir(&exports).unwrap().count() == 0);
}

#[tokio::test]
async fn the_privacy_team_exports_for_a_verified_request_which_is_tracked() {
    let app = TestApp::start().await;
    app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/subjects/u-1001/export"))
        .bearer_auth(app.privacy_token())
        .header("X-Clover-Justification", "DSAR-2026001")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let files = unzip(&response.bytes().await.unwrap());
    check_manifest(&app, &files);

    // The request is in the queue, fulfilled, with its deadline a month on.
    let list = |state: &'static str, token: String| {
        let app = &app;
        async move {
            app.client(DUBLIN)
                .get(app.url(&format!("/v1/requests/subjects?state={state}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let body: Value = list("fulfilled", app.privacy_token()).await.json().await.unwrap();
    let requests = body["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{body}");
    assert_eq!(requests[0]["kind"], "export");
    assert_eq!(requests[0]["reference"], "DSAR-2026001");
    assert!(!body.to_string().contains("u-1001"), "the queue names no subject");
    // Not the privacy team: refused, logged.
    problem(list("open", app.token()).await, 403, "forbidden").await;
    problem(list("open", app.subject_token("u-1001")).await, 403, "staff-only").await;
    let response = app
        .client(DUBLIN)
        .get(app.url("/v1/requests/subjects?state=whatever"))
        .bearer_auth(app.privacy_token())
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-query").await;

    // A held erasure is open; the team moves it on, extends it once, and cannot go back.
    let hash = app.boundary.subject_hash(&clover_model::SubjectId::new("u-1001".to_owned()).unwrap());
    app.boundary.store().place_legal_hold(&hash, "PO-7").await.unwrap();
    let response =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-1001")).send().await.unwrap();
    problem(response, 409, "held").await;
    let body: Value = list("open", app.privacy_token()).await.json().await.unwrap();
    let id = body["requests"][0]["request_id"].as_str().unwrap().to_owned();
    let step = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client(DUBLIN)
                .post(app.url(&format!("/v1/requests/subjects/{id}")))
                .bearer_auth(app.privacy_token())
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let moved: Value = step(json!({"state": "in_progress", "extend": true})).await.json().await.unwrap();
    assert_eq!(moved["request"]["state"], "in_progress");
    assert_eq!(moved["request"]["extended"], true);
    problem(step(json!({"state": "in_progress", "extend": true})).await, 409, "conflict").await;
    problem(step(json!({"state": "open"})).await, 409, "conflict").await;
    problem(step(json!({"state": "expired"})).await, 409, "conflict").await;
    let moved: Value = step(json!({"state": "denied"})).await.json().await.unwrap();
    assert_eq!(moved["request"]["state"], "denied");
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/requests/subjects/sr-000000000000000000000000"))
        .bearer_auth(app.privacy_token())
        .json(&json!({"state": "denied"}))
        .send()
        .await
        .unwrap();
    problem(response, 404, "not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_ten_thousand_records_is_whole_and_logs_each_opening() {
    use futures_util::StreamExt as _;
    let app = TestApp::start().await;
    assert_eq!(app.put_subject("u-many").await.status(), 201);
    let token = app.token();
    let client = app.client(DUBLIN);
    let url = app.url("/v1/subjects/u-many/records");
    futures_util::stream::iter(0..10_000)
        .map(|i| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let category = if i % 3 == 0 { "profile" } else { "content" };
                let body = json!({"category": category, "fields": {"text": format!("record {i}")}});
                let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 201);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let before = app.boundary.log().size();
    let response = app
        .client(UNKNOWN)
        .post(app.url("/v1/me/export"))
        .bearer_auth(app.subject_token("u-many"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-clover-export-records"], "10000");
    let files = unzip(&response.bytes().await.unwrap());
    let profile: Value = serde_json::from_slice(&files["records/profile.json"]).unwrap();
    let content: Value = serde_json::from_slice(&files["records/content.json"]).unwrap();
    assert_eq!(profile.as_array().unwrap().len(), 3_334);
    assert_eq!(content.as_array().unwrap().len(), 6_666);
    let mut texts: Vec<&str> = profile
        .as_array()
        .unwrap()
        .iter()
        .chain(content.as_array().unwrap())
        .map(|r| r["fields"]["text"].as_str().unwrap())
        .collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), 10_000, "every record once");
    check_manifest(&app, &files);
    // The decision and one entry per record opened.
    assert!(app.boundary.log().size() - before >= 10_001);
    let history: Value = serde_json::from_slice(&files["accesses.json"]).unwrap();
    assert!(history["entries"].as_array().unwrap().len() >= 20_001, "the writes, the decision, the openings");
}

#[tokio::test]
async fn an_erasure_made_by_staff_for_someone_is_tracked_under_its_ticket() {
    let app = TestApp::start().await;
    app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    let response = app
        .client(DUBLIN)
        .delete(app.url("/v1/subjects/u-1001"))
        .bearer_auth(app.token())
        .header("X-Clover-Justification", "DSAR-77")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let requests = app.boundary.store().subject_requests(Some("fulfilled")).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].kind.as_str(), requests[0].reference.as_str()), ("erasure", "DSAR-77"));
    // A subject's own erasure needs no person: not tracked.
    app.seed("u-2002", json!({"display_name": "Bram"})).await;
    let response =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-2002")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.boundary.store().subject_requests(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_privacy_teams_exports_count_as_bulk_access_and_only_employees_make_them() {
    let app = TestApp::start_with(|c| c.policy.bulk_threshold = 2).await;
    for subject in ["u-1", "u-2", "u-3"] {
        app.seed(subject, json!({"display_name": subject})).await;
    }
    let export = |subject: &'static str, token: String| {
        let app = &app;
        async move {
            app.client(DUBLIN)
                .post(app.url(&format!("/v1/subjects/{subject}/export")))
                .bearer_auth(token)
                .header("X-Clover-Justification", "DSAR-1")
                .json(&json!({}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(export("u-1", app.privacy_token()).await.status(), 200);
    assert_eq!(export("u-2", app.privacy_token()).await.status(), 200);
    let body = problem(export("u-3", app.privacy_token()).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "approval-required");
    assert!(body["decision"]["policies"].as_array().unwrap().contains(&json!("bulk-access-needs-approval")));
    // A service with the privacy role: not the privacy team.
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.sub = "exporter".into();
    claims.kind = clover_model::PrincipalKind::Service;
    claims.roles = vec!["privacy".into()];
    problem(export("u-1", app.mint(&claims)).await, 403, "forbidden").await;
}

#[tokio::test]
async fn an_export_a_crash_left_behind_is_deleted_at_the_next_start() {
    let app = TestApp::start().await;
    let exports = app.data_dir().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    std::fs::write(exports.join(".tmpLEFT"), b"PK a subject's records").unwrap();
    let app = app.restart().await;
    assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 0);
    drop(app);
}
