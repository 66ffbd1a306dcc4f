//! JSON Lines and CSV files written by the tests: every class, line numbers, the root.

use clover_model::Region;
use clover_repatriate::{
    Class, Mapping, MerkleBuilder, OpenOptions, Source, SourceError, SourceSpec, inclusion_proof, record_digest,
};

use crate::support::{MAPPING, counts, expected_counts, file, people, people_jsonl, plan_of};

fn problems(plan: &clover_repatriate::Plan) -> Vec<String> {
    plan.unclassifiable.shown.iter().map(|p| format!("{}: {}", p.at, p.reason)).collect()
}

#[tokio::test]
async fn jsonl_rows_are_classified_exactly_and_the_root_covers_the_regions_records() {
    let dir = tempfile::tempdir().unwrap();
    let spec = file(dir.path(), "people.jsonl", people_jsonl(&people()));
    let plan = plan_of(&spec, MAPPING, OpenOptions::default()).await;
    let expected: Vec<(String, [u64; 3])> = expected_counts().into_iter().map(|(c, n)| (c.to_owned(), n)).collect();
    assert_eq!(counts(&plan), expected);
    assert_eq!(plan.records, 3);
    assert_eq!(plan.total.region.records, 3);
    assert_eq!(plan.total.elsewhere.records, 2);
    assert_eq!(plan.total.unclassifiable.records, 9);
    assert_eq!(plan.unclassifiable.total, 9);
    let elsewhere: Vec<(String, u64)> = plan.elsewhere.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    assert_eq!(elsewhere, [("sg".to_owned(), 1), ("us".to_owned(), 1)]);
    let found = problems(&plan);
    let wanted = [
        "line 3: duplicate source key \"2\"",
        "line 6: the fields are not a JSON object: invalid JSON",
        "line 7: unknown country \"FR\"",
        "line 8: invalid subject id \"bad subject!\"",
        "line 9: the birth date does not parse as YYYY-MM-DD",
        "line 10: no home region or country (column \"country\" is empty)",
        "line 11: invalid category \"Bad Kind\"",
        "line 12: the fields are not a JSON object: found an array",
        "line 13: the record is 2078 bytes of canonical JSON, more than the limit of 1024",
    ];
    assert_eq!(found.len(), wanted.len(), "{found:#?}");
    for (f, w) in found.iter().zip(wanted) {
        assert!(f.starts_with(w), "{f} does not start with {w}");
    }
    // The total bytes are the file's.
    let size = std::fs::metadata(dir.path().join("people.jsonl")).unwrap().len();
    assert_eq!(plan.total.region.bytes + plan.total.elsewhere.bytes + plan.total.unclassifiable.bytes, size);

    // One field of a region's record changes the root; a change to another region's does not.
    let mut changed = people();
    changed[0].data = changed[0].data.replace("Cork", "Galway");
    let other =
        plan_of(&file(dir.path(), "changed.jsonl", people_jsonl(&changed)), MAPPING, OpenOptions::default()).await;
    assert_ne!(other.root, plan.root);
    let mut elsewhere = people();
    elsewhere[3].data = elsewhere[3].data.replace("Wei", "Mei");
    let same = plan_of(&file(dir.path(), "sg.jsonl", people_jsonl(&elsewhere)), MAPPING, OpenOptions::default()).await;
    assert_eq!(same.root, plan.root);
    // The order is part of the root.
    let mut swapped = people();
    swapped.swap(0, 1);
    let reordered =
        plan_of(&file(dir.path(), "swapped.jsonl", people_jsonl(&swapped)), MAPPING, OpenOptions::default()).await;
    assert_eq!(reordered.records, 3);
    assert_ne!(reordered.root, plan.root);
}

#[tokio::test]
async fn csv_of_the_same_rows_gives_the_same_counts_and_root() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl =
        plan_of(&file(dir.path(), "people.jsonl", people_jsonl(&people())), MAPPING, OpenOptions::default()).await;
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(["id", "user_id", "country", "born", "kind", "data"]).unwrap();
    for p in people() {
        let id = p.id.to_string();
        writer
            .write_record([id.as_str(), p.user, p.country.unwrap_or(""), p.born.unwrap_or(""), p.kind, &p.data])
            .unwrap();
    }
    let csv =
        plan_of(&file(dir.path(), "people.csv", writer.into_inner().unwrap()), MAPPING, OpenOptions::default()).await;
    assert_eq!(counts(&csv), counts(&jsonl));
    assert_eq!(csv.root, jsonl.root);
    assert_eq!(csv.records, 3);
}

#[tokio::test]
async fn bad_lines_are_reported_with_their_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = r#"
        max_record_bytes = 300
        [file]
        source_key = "id"
        subject = "user"
        home_region = "region"
        category = "profile"
        field_columns = ["name", "email"]
    "#;
    let mut jsonl: Vec<u8> = Vec::new();
    jsonl.extend_from_slice(
        b"{\"id\": \"a\", \"user\": \"u-a\", \"region\": \"eu\", \"name\": \"A\", \"email\": null}\n",
    );
    jsonl.extend_from_slice(b"\n");
    jsonl.extend_from_slice(b"{\"id\": \"b\", \"user\": \"u-b\", \"region\": \"eu\", \"name\": \"\xff\xfe\"}\n");
    jsonl.extend_from_slice(b"[1, 2]\n");
    jsonl.extend_from_slice(b"{\"id\": [1], \"user\": \"u-c\", \"region\": \"eu\"}\n");
    jsonl.extend_from_slice(b"{\"id\": \"d\", \n");
    jsonl.extend_from_slice(b"{\"id\": \"a\", \"user\": \"u-a\", \"region\": \"eu\", \"name\": \"again\"}\n");
    jsonl.extend_from_slice(b"{\"id\": \"e\", \"user\": \"u-e\", \"region\": \"EU\", \"name\": \"E\"}\n");
    jsonl.extend_from_slice(b"{\"id\": \"f\", \"user\": \"u-f\", \"region\": \"us\", \"name\": \"F\"}");
    let plan = plan_of(&file(dir.path(), "bad.jsonl", &jsonl), mapping, OpenOptions::default()).await;
    assert_eq!(plan.total.region.records, 1);
    assert_eq!(plan.total.elsewhere.records, 1);
    assert_eq!(
        problems(&plan),
        [
            "line 3: not valid UTF-8 (byte 52 of the line)",
            "line 4: not a JSON object: found an array",
            "line 5: the \"id\" column holds an array, not text or a number",
            "line 6: not a JSON object: EOF while parsing a value at line 2 column 0",
            "line 7: duplicate source key \"a\" (its first row counts)",
            "line 8: invalid region \"EU\": 1 to 32 characters of a-z, 0-9 and '-'",
        ]
    );

    let mut csv: Vec<u8> = Vec::new();
    csv.extend_from_slice(b"id,user,region,name,email\n");
    csv.extend_from_slice(b"1,u-1,eu,\"Smith, Jo\",jo@example.org\n");
    csv.extend_from_slice(b"2,u-2,eu,too,few\xff,columns,here\n");
    csv.extend_from_slice(b"3,u-3,eu,\"two\nlines\",x@example.org\n");
    csv.extend_from_slice(b"4,u-4,eu,\xc3\x28,x@example.org\n");
    csv.extend_from_slice(b"1,u-1,eu,dup,dup@example.org\n");
    csv.extend_from_slice(format!("5,u-5,eu,{},big@example.org\n", "n".repeat(400)).as_bytes());
    csv.extend_from_slice(b"6,u-6,,nowhere,x@example.org\n");
    csv.extend_from_slice(b"7,u-7,sg,,\n");
    let plan = plan_of(&file(dir.path(), "bad.csv", &csv), mapping, OpenOptions::default()).await;
    assert_eq!(plan.total.region.records, 2, "{:#?}", problems(&plan));
    assert_eq!(plan.total.elsewhere.records, 1);
    assert_eq!(
        problems(&plan),
        [
            "line 3: 7 columns where the header has 5",
            "line 6: not valid UTF-8 (byte 0 of column \"name\")",
            "line 7: duplicate source key \"1\" (its first row counts)",
            "line 8: the record is 502 bytes of canonical JSON, more than the limit of 300",
            "line 9: no home region or country (column \"region\" is empty)",
        ]
    );

    // A header without a mapped column is an error naming it, before any row.
    let spec = file(dir.path(), "noheader.csv", "id,user,name,email\n1,u-1,a,b\n");
    let error = Source::open(&spec, Mapping::parse(mapping).unwrap(), Region::new("eu").unwrap()).await.unwrap_err();
    assert!(matches!(error, SourceError::Header { .. }), "{error}");
    assert!(error.to_string().contains("no column \"region\""), "{error}");
    // A file of an unknown kind is refused by name.
    assert!(matches!(SourceSpec::file(dir.path().join("x.txt")), Err(SourceError::UnknownFormat { .. })));
}

#[tokio::test]
async fn each_record_of_the_region_has_an_inclusion_proof_in_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let spec = file(dir.path(), "people.jsonl", people_jsonl(&people()));
    let mut source = Source::open(&spec, Mapping::parse(MAPPING).unwrap(), Region::new("eu").unwrap()).await.unwrap();
    let mut digests = Vec::new();
    let mut builder = MerkleBuilder::new();
    while let Some(row) = source.next_row().await.unwrap() {
        if row.class == Class::Region {
            let digest = row.digest.unwrap();
            assert_eq!(record_digest(row.record.as_ref().unwrap()), digest);
            builder.push(&digest);
            digests.push(digest);
        }
    }
    let plan = plan_of(&spec, MAPPING, OpenOptions::default()).await;
    assert_eq!(builder.root(), plan.root);
    for (i, digest) in digests.iter().enumerate() {
        let proof = inclusion_proof(&digests, i as u64).unwrap();
        proof.verify(digest, &plan.root).unwrap();
        assert!(proof.verify(&digests[(i + 1) % digests.len()], &plan.root).is_err());
    }
}
