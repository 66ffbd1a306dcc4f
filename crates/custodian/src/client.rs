//! The boundary's client of a custodian in its own process.

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_event::{SubjectIndexKey, SubjectTagKey};
use clover_keys::{DataKey, KeyCustody, KeyError, PseudonymisedView, SubjectFacts};
use clover_log::Receipt;
use clover_model::{Fields, Region, SubjectId};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::verify::WireReceipt;

/// A [`KeyCustody`] that asks a custodian over HTTP, sending each access's log entry as its
/// receipt.
#[derive(Clone)]
pub struct RemoteCustody {
    url: String,
    region: Region,
    http: reqwest::Client,
    /// The boundary's subject-hash key: metadata requests name the subject by its hash in the
    /// log, as the custodian's key store does.
    index: std::sync::Arc<SubjectIndexKey>,
}

impl std::fmt::Debug for RemoteCustody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCustody").field("url", &self.url).field("region", &self.region).finish_non_exhaustive()
    }
}

impl RemoteCustody {
    /// The custodian at `url` (its base URL), holding `region`'s keys.
    pub fn new(url: &str, region: Region, index: SubjectIndexKey) -> Self {
        let http = clover_tls::ClientTls::platform_client(std::time::Duration::from_secs(15));
        Self { url: url.trim_end_matches('/').to_owned(), region, http, index: std::sync::Arc::new(index) }
    }

    /// Calls the custodian with `http`: one made by [`clover_tls::ClientTls`], for mutual TLS.
    #[must_use]
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, KeyError> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .map_err(|cause| KeyError::Unreachable { url: self.url.clone(), cause: Box::new(cause) })?;
        let status = response.status().as_u16();
        // A body that cannot be read is an empty one: the status still says what happened.
        let body = response.bytes().await.unwrap_or_default();
        read_answer(status, &body)
    }

    fn field(answer: &Value, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        answer_field(answer, name)
    }

    async fn key(&self, path: &str, receipt: &Receipt) -> Result<DataKey, KeyError> {
        let answer = self.post(path, &json!(wire(receipt, &self.index))).await?;
        DataKey::from_slice(&Self::field(&answer, "key")?)
    }
}

/// What a custodian's answer means, from its status and body (bytes from the custodian, which
/// the boundary does not trust to be well formed): the JSON body of a success, or the
/// [`KeyError`] its status names, with the [`error_detail`] of its body. A body that is not
/// JSON is an empty object (a success then lacks the fields asked for).
pub fn read_answer(status: u16, body: &[u8]) -> Result<Value, KeyError> {
    match status {
        200 | 201 => Ok(serde_json::from_slice(body).unwrap_or_else(|_| json!({}))),
        403 => Err(KeyError::Receipt(detail_or_none(body))),
        404 => Err(KeyError::NoDataKey),
        409 => Err(KeyError::DataKeyExists),
        410 => Err(KeyError::Erased),
        422 => Err(KeyError::Decrypt),
        429 => Err(KeyError::TooManyPseudonyms(detail_or_none(body))),
        502..=504 => Err(KeyError::Unavailable(format!("the custodian answered {status}: {}", detail_or_none(body)))),
        _ => Err(KeyError::Hsm(format!("the custodian answered {status}: {}", detail_or_none(body)))),
    }
}

/// The bytes of the base64 field `name` of a custodian's answer.
pub fn answer_field(answer: &Value, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text =
        answer.get(name).and_then(Value::as_str).ok_or(KeyError::Crypto("the custodian's answer lacks a field"))?;
    B64.decode(text).map(Zeroizing::new).map_err(|_| KeyError::Crypto("the custodian's answer is not base64"))
}

/// The most an error's detail keeps of what the other side sent, in characters: it goes into
/// error messages and logs, which a hostile server must not flood.
pub const MAX_DETAIL_CHARS: usize = 1024;

/// What an error answer says went wrong, for a message: a problem's `detail` (RFC 9457, the
/// boundary's errors) or an `error` string (a custodian's), shortened to [`MAX_DETAIL_CHARS`]
/// characters with control characters replaced, or `None` when the body has neither (whatever
/// it is: the status is the error, the detail a courtesy).
pub fn error_detail(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let text = ["detail", "error"].iter().find_map(|name| answer.get(name).and_then(Value::as_str))?;
    Some(text.chars().take(MAX_DETAIL_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect())
}

fn detail_or_none(body: &[u8]) -> String {
    error_detail(body).unwrap_or_else(|| "no detail".to_owned())
}

#[async_trait]
impl KeyCustody for RemoteCustody {
    fn region(&self) -> &Region {
        &self.region
    }

    async fn create_data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.key("/v1/data-keys/create", receipt).await
    }

    async fn data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.key("/v1/data-keys/fetch", receipt).await
    }

    async fn reseal(&self, receipt: &Receipt, sealed: &[u8], aad: &[u8]) -> Result<(DataKey, Vec<u8>), KeyError> {
        let body = json!({
            "receipt": wire(receipt, &self.index),
            "sealed": B64.encode(sealed),
            "aad": B64.encode(aad),
        });
        let answer = self.post("/v1/data-keys/reseal", &body).await?;
        let key = DataKey::from_slice(&Self::field(&answer, "key")?)?;
        Ok((key, Self::field(&answer, "sealed")?.to_vec()))
    }

    async fn view(
        &self,
        receipt: &Receipt,
        sealed: &[u8],
        aad: &[u8],
        legacy: bool,
    ) -> Result<PseudonymisedView, KeyError> {
        let body = json!({
            "receipt": wire(receipt, &self.index),
            "sealed": B64.encode(sealed),
            "aad": B64.encode(aad),
            "legacy": legacy,
        });
        let answer = self.post("/v1/views", &body).await?;
        let token = |name: &str| answer.get(name).and_then(Value::as_str).map(ToOwned::to_owned);
        match (answer.get("fields"), token("record"), token("subject")) {
            (Some(Value::Object(map)), Some(record), Some(subject)) => {
                Ok(PseudonymisedView { fields: Fields::new(map.clone()), record, subject })
            }
            _ => Err(KeyError::Crypto("the custodian's view is not a JSON object with its ids' tokens")),
        }
    }

    async fn transfer(
        &self,
        receipt: &clover_log::TransferReceipt,
        items: Vec<clover_keys::TransferItem>,
        quasi_only: bool,
    ) -> Result<Vec<clover_keys::TransferOutcome>, KeyError> {
        let mut outcomes = Vec::with_capacity(items.len());
        for chunk in items.chunks(crate::server::MAX_TRANSFER_ITEMS) {
            let body = json!({
                "index": receipt.index(),
                "entry": B64.encode(receipt.entry()),
                "items": chunk.iter().map(crate::server::WireTransferItem::of).collect::<Vec<_>>(),
                "quasi_only": quasi_only,
            });
            let answer = self.post("/v1/transfers", &body).await?;
            let malformed = || KeyError::Crypto("the custodian's transfer answer is not one outcome per record");
            let answered = answer.get("outcomes").and_then(Value::as_array).ok_or_else(malformed)?;
            if answered.len() != chunk.len() {
                return Err(malformed());
            }
            for outcome in answered {
                outcomes.push(match outcome.get("outcome").and_then(Value::as_str) {
                    Some("treated") => {
                        let text = |name: &str| outcome.get(name).and_then(Value::as_str).map(ToOwned::to_owned);
                        let fields = outcome.get("fields").and_then(Value::as_object).cloned().ok_or_else(malformed)?;
                        let quasi: Vec<(String, Value)> = outcome
                            .get("quasi")
                            .cloned()
                            .and_then(|q| serde_json::from_value(q).ok())
                            .ok_or_else(malformed)?;
                        clover_keys::TransferOutcome::Treated {
                            subject: text("subject").ok_or_else(malformed)?,
                            record: text("record").ok_or_else(malformed)?,
                            fields: Fields::new(fields),
                            quasi,
                            refused: outcome
                                .get("refused")
                                .and_then(Value::as_u64)
                                .and_then(|n| u32::try_from(n).ok())
                                .unwrap_or(0),
                        }
                    }
                    Some("minor") => clover_keys::TransferOutcome::Minor,
                    Some("erased") => clover_keys::TransferOutcome::Erased,
                    Some("not-covered") => clover_keys::TransferOutcome::NotCovered,
                    _ => return Err(malformed()),
                });
            }
        }
        Ok(outcomes)
    }

    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError> {
        let answer = self.post("/v1/data-keys/destroy", &json!(wire(receipt, &self.index))).await?;
        Ok(answer.get("destroyed").and_then(Value::as_bool).unwrap_or(false))
    }

    async fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let body = json!({ "subject": subject.as_str(), "subject_hash": self.index.hash(subject), "data": B64.encode(plaintext) });
        Ok(Self::field(&self.post("/v1/metadata/seal", &body).await?, "data")?.to_vec())
    }

    async fn subject_facts(&self, subject: &SubjectId, sealed: &[u8]) -> Result<SubjectFacts, KeyError> {
        let body = json!({ "subject": subject.as_str(), "subject_hash": self.index.hash(subject), "data": B64.encode(sealed) });
        let answer = self.post("/v1/metadata/facts", &body).await?;
        let minor = answer
            .get("minor")
            .and_then(Value::as_bool)
            .ok_or(KeyError::Crypto("the custodian's answer lacks a field"))?;
        Ok(SubjectFacts { minor })
    }

    async fn subject_tag_key(&self, subject: &SubjectId, create: bool) -> Result<Option<SubjectTagKey>, KeyError> {
        let body = json!({ "subject_hash": self.index.hash(subject), "create": create });
        match self.post("/v1/subject-tag-keys", &body).await {
            Ok(answer) => Ok(Some(SubjectTagKey::new(&Self::field(&answer, "key")?))),
            Err(KeyError::NoDataKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pseudonym(
        &self,
        receipt: &Receipt,
        purpose: &str,
        destination: &str,
        input: &[u8],
    ) -> Result<String, KeyError> {
        let body = json!({
            "receipt": wire(receipt, &self.index),
            "purpose": purpose,
            "destination": destination,
            "input": B64.encode(input),
        });
        let answer = self.post("/v1/pseudonym", &body).await?;
        answer
            .get("token")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
            .ok_or(KeyError::Crypto("the custodian's answer lacks a token"))
    }
}

/// The receipt of an access logged in the boundary's process, as a custodian in another one is
/// sent it, for the subject its permit names.
fn wire(receipt: &Receipt, index: &SubjectIndexKey) -> WireReceipt {
    WireReceipt {
        index: receipt.index(),
        entry: B64.encode(receipt.entry()),
        subject_hash: index.hash(receipt.permit().subject()),
        opening: receipt.annex().and_then(clover_event::Annex::record_opening),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_detail_is_read_from_a_problem_or_a_custodian_error() {
        // A boundary's problem (RFC 9457) and a custodian's error answer both say what went wrong:
        // `clover custodian status|rotate` read only `detail`, so a custodian's refusal was
        // printed as "no detail".
        assert_eq!(error_detail(br#"{"type":"urn:clover:problem:forbidden","detail":"denied"}"#).unwrap(), "denied");
        assert_eq!(error_detail(br#"{"error":"the admin token is wrong"}"#).unwrap(), "the admin token is wrong");
        for nothing in [&b""[..], b"not json", b"[]", b"{}", br#"{"detail": 3}"#, b"\xff\xfe"] {
            assert_eq!(error_detail(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn an_error_detail_is_bounded_and_printable() {
        // A hostile server's detail goes into terminals and logs: no escape sequences, no flood.
        let detail = error_detail(b"{\"detail\":\"\\u001b[2Jgone\\r\\nforged line\"}").unwrap();
        assert_eq!(detail, " [2Jgone  forged line");
        let long = format!("{{\"error\":\"{}\"}}", "é".repeat(5000));
        assert_eq!(error_detail(long.as_bytes()).unwrap().chars().count(), MAX_DETAIL_CHARS);
    }

    #[test]
    fn an_answer_is_read_by_its_status() {
        assert_eq!(read_answer(200, br#"{"key":"AAAA"}"#).unwrap()["key"], "AAAA");
        assert_eq!(read_answer(201, b"garbage").unwrap(), json!({}));
        assert!(matches!(read_answer(403, br#"{"error":"no"}"#), Err(KeyError::Receipt(m)) if m == "no"));
        assert!(matches!(read_answer(404, b""), Err(KeyError::NoDataKey)));
        assert!(matches!(read_answer(409, b""), Err(KeyError::DataKeyExists)));
        assert!(matches!(read_answer(410, b""), Err(KeyError::Erased)));
        assert!(matches!(read_answer(422, b""), Err(KeyError::Decrypt)));
        assert!(
            matches!(read_answer(429, br#"{"error":"enough"}"#), Err(KeyError::TooManyPseudonyms(m)) if m == "enough")
        );
        let other = read_answer(503, b"").unwrap_err().to_string();
        assert!(other.contains("503") && other.contains("no detail"), "{other}");
        assert!(answer_field(&json!({"key": "not base64!"}), "key").is_err());
        assert!(answer_field(&json!({"key": 3}), "key").is_err());
        assert_eq!(*answer_field(&json!({"key": "AAEC"}), "key").unwrap(), vec![0, 1, 2]);
    }
}
