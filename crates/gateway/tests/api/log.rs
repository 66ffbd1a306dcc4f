//! Log before access: every decision is in the log, durably, before anything is decrypted, and
//! every answer says where.

use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::Note;
use clover_tlog::tree::verify_inclusion;
use serde_json::{Value, json};

use clover_event::AnnexField;

use crate::harness::{DUBLIN, SINGAPORE, TestApp, annex_of, files_containing, log_entries, problem};

async fn entry(app: &TestApp, index: u64) -> Value {
    let bytes = app.boundary.log().entry(index).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn every_decision_is_logged_and_every_answer_carries_its_index() {
    let app = TestApp::start().await;
    // An adult: a minor's messages would need an approval to be read.
    let put = app.client(DUBLIN).put(app.url("/v1/subjects/u-1")).bearer_auth(app.token());
    let put = put.json(&json!({"home_region": "eu", "birth_date": "1990-02-01"}));
    let put: Value = put.send().await.unwrap().json().await.unwrap();
    let post: Value =
        app.post_record("u-1", "messages", json!({"text": "MARKER-q7zv-in-a-message"})).await.json().await.unwrap();
    let record = post["record_id"].as_str().unwrap().to_owned();
    let read = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(app.token())
        .header("X-Clover-Purpose", "support")
        .header("X-Clover-Justification", "TICKET-42")
        .send()
        .await
        .unwrap();
    let read: Value = read.json().await.unwrap();
    let denied = problem(app.get_record(SINGAPORE, &record).await, 403, "forbidden").await;
    let erased: Value = app
        .client(DUBLIN)
        .delete(app.url("/v1/subjects/u-1"))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let indexes: Vec<u64> =
        [&put, &post, &read, &denied, &erased].iter().map(|b| b["log_index"].as_u64().unwrap()).collect();
    // Entries 0, 1 and 2: the keyring, the configuration and where the data lives, logged when
    // the boundary first opened.
    let key = entry(&app, 0).await;
    assert_eq!((key["kind"].as_str(), key["action"].as_str()), (Some("key"), Some("create-keyring")));
    assert!(key["detail"].as_str().unwrap().contains("checkpoint key clover.local/eu+"), "{key}");
    let config = entry(&app, 1).await;
    assert_eq!((config["kind"].as_str(), config["action"].as_str()), (Some("config"), Some("configure")));
    assert!(config["detail"].as_str().unwrap().starts_with("configuration sha256:"), "{config}");
    let residency = entry(&app, 2).await;
    assert_eq!((residency["kind"].as_str(), residency["action"].as_str()), (Some("residency"), Some("residency")));
    assert_eq!(indexes, vec![3, 4, 5, 6, 7], "one entry per decision, in order");

    let expected = [
        ("write", "write", "allow", None),
        ("write", "write", "allow", Some("messages")),
        ("access", "read", "allow", Some("messages")),
        ("access", "read", "deny", Some("messages")),
        ("erasure", "erase", "allow", None),
    ];
    let pseudonym = app.boundary.principal_pseudonym("employee", "ana");
    let mut tags = std::collections::HashSet::new();
    for (index, (kind, action, effect, category)) in expected.into_iter().enumerate() {
        let e = entry(&app, index as u64 + 3).await;
        assert_eq!(e["v"], 2);
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["action"], action, "{e}");
        assert_eq!(e["decision"]["effect"], effect, "{e}");
        assert_eq!(e["category"], category.map_or(Value::Null, Value::from), "{e}");
        // The caller by pseudonym (the same in every entry), kind and home region; no name.
        assert_eq!(e["principal"], json!({"pseudonym": pseudonym, "kind": "employee", "region": "eu"}));
        // The subject by a tag that no other entry shares.
        assert!(tags.insert(e["subject"]["tag"].as_str().unwrap().to_owned()), "a tag repeats: {e}");
        for gone in ["record", "justification", "\"id\""] {
            assert!(!e.to_string().contains(gone), "{gone} in a public entry: {e}");
        }
        // Who asked is in the annex the region keeps; the subject and the record were unlinked
        // from it by the erasure at the end.
        let annex = annex_of(&app.boundary, &e).await;
        assert_eq!(annex.principal.as_deref(), Some("ana"));
        assert!(matches!(annex.subject, AnnexField::Unlinked(_)), "{annex:?}");
    }
    let read_entry = entry(&app, 5).await;
    assert_eq!(read_entry["purpose"], "support");
    assert_eq!(annex_of(&app.boundary, &read_entry).await.justification.as_deref(), Some("TICKET-42"));
    assert_eq!(read_entry["origin"], json!({"site": "dublin-1", "region": "eu"}));
    assert_eq!(read_entry["decision"]["view"], "full");
    let denied_entry = entry(&app, 6).await;
    assert_eq!(denied_entry["origin"], json!({"site": "singapore-1", "region": "sg"}));
    assert_eq!(
        denied_entry["decision"]["policies"],
        json!(["no-full-view-from-outside", "remote-access-is-a-transfer"])
    );
    assert_eq!(denied_entry["decision"]["view"], Value::Null);

    // The log never holds the subject id, the record id, the caller's name or the ticket.
    for secret in [b"u-1".as_slice(), record.as_bytes(), b"ana", b"TICKET-42", b"MARKER-q7zv"] {
        assert!(
            files_containing(&app.data_dir().join("log"), secret).is_empty(),
            "{}",
            String::from_utf8_lossy(secret)
        );
    }
}

#[tokio::test]
async fn inclusion_proofs_verify_against_the_signed_checkpoint() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let index = read["log_index"].as_u64().unwrap();

    let client = app.client(DUBLIN);
    let proof: Value = client
        .get(app.url(&format!("/v1/log/proof/inclusion?index={index}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let note = Note::parse(proof["checkpoint"].as_str().unwrap()).unwrap();
    let vkey = app.boundary.log_verifier();
    note.verify(&vkey).unwrap();
    let checkpoint = Checkpoint::parse(&note.text).unwrap();
    assert_eq!(proof["size"], checkpoint.size);
    assert_eq!(proof["root_hash"], checkpoint.root.to_base64());
    let path: Vec<Hash> =
        proof["proof"].as_array().unwrap().iter().map(|h| Hash::from_base64(h.as_str().unwrap()).unwrap()).collect();
    let leaf = leaf_hash(&app.boundary.log().entry(index).await.unwrap());
    assert_eq!(proof["leaf_hash"], leaf.to_base64());
    verify_inclusion(&leaf, index, checkpoint.size, &path, &checkpoint.root).unwrap();
    // The same proof, independently.
    let theirs: Vec<tlog_tiles::Hash> = path.iter().map(|h| tlog_tiles::Hash(h.0)).collect();
    tlog_tiles::check_record(
        &theirs,
        checkpoint.size,
        tlog_tiles::Hash(checkpoint.root.0),
        index,
        tlog_tiles::Hash(leaf.0),
    )
    .unwrap();

    // The checkpoint the API serves is the same signed note.
    let served = client.get(app.url("/log/checkpoint")).send().await.unwrap().text().await.unwrap();
    Note::parse(&served).unwrap().verify(&vkey).unwrap();

    // Out of range is a clear 400.
    let bad = client.get(app.url("/v1/log/proof/inclusion?index=999&size=3")).send().await.unwrap();
    problem(bad, 400, "invalid-query").await;
    let bad = client.get(app.url("/v1/log/proof/inclusion?index=x")).send().await.unwrap();
    problem(bad, 400, "invalid-query").await;
    let bad = client.get(app.url("/v1/log/proof/consistency?old=5&new=2")).send().await.unwrap();
    problem(bad, 400, "invalid-query").await;
    // A size beyond the log is out of range too (it was a 404 saying the item may have been
    // erased; schemathesis found it).
    for url in ["/v1/log/proof/inclusion?index=0&size=1000", "/v1/log/proof/consistency?old=0&new=18446744073709551615"]
    {
        let bad = client.get(app.url(url)).send().await.unwrap();
        problem(bad, 400, "invalid-query").await;
    }
    let bad = client.get(app.url("/log/tile/0/x000/001")).send().await.unwrap();
    problem(bad, 400, "invalid-query").await;
    let missing = client.get(app.url("/log/tile/0/005")).send().await.unwrap();
    problem(missing, 404, "not-found").await;
}

#[tokio::test]
async fn a_subject_can_learn_who_accessed_their_data() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    app.seed("u-2", json!({"b": 2})).await;
    app.get_record(DUBLIN, &record).await;
    app.get_record(SINGAPORE, &record).await;
    let answer: Value = app
        .client(DUBLIN)
        .get(app.url("/v1/subjects/u-1/accesses"))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = answer["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let entry = &e["entry"];
            (
                entry["action"].as_str().unwrap().to_owned(),
                entry["decision"]["effect"].as_str().unwrap().to_owned(),
                entry["origin"]["site"].as_str().unwrap_or("unknown").to_owned(),
            )
        })
        .collect();
    let own = |a: &str, e: &str, s: &str| (a.to_owned(), e.to_owned(), s.to_owned());
    assert_eq!(
        summary,
        vec![
            own("write", "allow", "dublin-1"),
            own("write", "allow", "dublin-1"),
            own("read", "allow", "dublin-1"),
            own("read", "deny", "singapore-1"),
            own("list-accesses", "allow", "dublin-1"),
        ],
        "u-1's entries only, this listing included"
    );
    assert_eq!(entries.last().unwrap()["index"], answer["log_index"]);
    assert!(!answer.to_string().contains("u-2"));

    // From outside the region, the listing is denied (and that is logged too).
    let denied =
        app.client(SINGAPORE).get(app.url("/v1/subjects/u-1/accesses")).bearer_auth(app.token()).send().await.unwrap();
    let body = problem(denied, 403, "forbidden").await;
    assert!(body["log_index"].as_u64().is_some());
}

#[tokio::test]
async fn malformed_purpose_headers_are_refused_before_anything_is_logged() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    let size = app.boundary.log().size();
    let response = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(app.token())
        .header("X-Clover-Purpose", "support; DROP TABLE")
        .send()
        .await
        .unwrap();
    let body = problem(response, 400, "invalid-header").await;
    assert!(body["detail"].as_str().unwrap().contains("x-clover-purpose"), "{body}");
    assert_eq!(app.boundary.log().size(), size);
}

#[tokio::test]
async fn a_configuration_change_is_logged_once() {
    let app = TestApp::start().await;
    let config = app.boundary.config().clone();
    let dir = app.stop().await;
    async fn configs(log: &clover_log::Log) -> usize {
        log_entries(log).await.iter().filter(|e| e["kind"] == "config").count()
    }
    // The same configuration again: nothing new.
    let boundary = clover_gateway::Boundary::open(config.clone()).await.unwrap();
    assert_eq!(configs(boundary.log()).await, 1);
    drop(boundary);
    // A changed one: logged.
    let changed = clover_gateway::Config { max_body_bytes: 4096, ..config };
    let boundary = clover_gateway::Boundary::open(changed).await.unwrap();
    assert_eq!(configs(boundary.log()).await, 2);
    drop(dir);
}

#[tokio::test]
async fn a_justification_is_a_ticket_id_never_free_text() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    let read = |ticket: &'static str| app.read_with_ticket(DUBLIN, &record, ticket);

    // Free text (a name, a birth date, a phone number, as an attacker wrote): refused before a
    // decision, so nothing of it reaches the log, which can never forget it.
    let before = app.boundary.log().size();
    for free_text in ["Jane-Doe-1970-01-01", "x", "call:353-1-555-0100", "case-1", "CASE-1/jane"] {
        let refused = problem(read(free_text).await.unwrap(), 400, "invalid-header").await;
        let detail = refused["detail"].as_str().unwrap();
        assert!(detail.contains("ticket id") && detail.contains("^[A-Z]{2,10}-[0-9]{1,10}$"), "{refused}");
        assert!(refused.get("log_index").is_none(), "no decision was made: {refused}");
    }
    assert_eq!(app.boundary.log().size(), before, "nothing was logged");
    assert!(files_containing(&app.data_dir(), b"Jane-Doe").is_empty());

    // A ticket id of the configured form is taken, and kept as it was given, in the entry's
    // private annex, not in the public log.
    let read: Value = read("CASE-7").await.unwrap().json().await.unwrap();
    let logged = entry(&app, read["log_index"].as_u64().unwrap()).await;
    assert!(!logged.to_string().contains("CASE-7"), "{logged}");
    assert_eq!(annex_of(&app.boundary, &logged).await.justification.as_deref(), Some("CASE-7"));
}

#[tokio::test]
async fn the_ticket_pattern_is_configuration_and_must_be_anchored() {
    let app = TestApp::start_with(|config| {
        config.policy.ticket_pattern = clover_gateway::config::TicketPattern::new("^INC[0-9]{4}$").unwrap();
    })
    .await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    let read = |ticket: &'static str| app.read_with_ticket(DUBLIN, &record, ticket);
    assert_eq!(read("INC0042").await.unwrap().status(), 200);
    problem(read("CASE-7").await.unwrap(), 400, "invalid-header").await;

    for unanchored in ["INC[0-9]+", "^INC[0-9]+", "INC[0-9]+$"] {
        let err = clover_gateway::config::TicketPattern::new(unanchored).unwrap_err();
        assert!(err.contains("anchored"), "{err}");
    }
    let err = clover_gateway::Config::parse("[policy]\nticket_pattern = \"^(unclosed$\"\n").unwrap_err();
    let err = clover_gateway::report::Chain(&err).to_string();
    assert!(err.contains("ticket_pattern"), "{err}");
}
