//! The boundary's client of a custodian in its own process.

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_event::{SubjectIndexKey, SubjectTagKey};
use clover_keys::{DataKey, KeyCustody, KeyError, SubjectFacts};
use clover_log::Receipt;
use clover_model::{Region, SubjectId};
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
            .map_err(|e| KeyError::Hsm(format!("the custodian at {} cannot be reached: {e}", self.url)))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        let message = answer.get("error").and_then(Value::as_str).unwrap_or("no detail").to_owned();
        match status.as_u16() {
            200 | 201 => Ok(answer),
            403 => Err(KeyError::Receipt(message)),
            404 => Err(KeyError::NoDataKey),
            409 => Err(KeyError::DataKeyExists),
            422 => Err(KeyError::Decrypt),
            _ => Err(KeyError::Hsm(format!("the custodian answered {status}: {message}"))),
        }
    }

    fn field(answer: &Value, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let text =
            answer.get(name).and_then(Value::as_str).ok_or(KeyError::Crypto("the custodian's answer lacks a field"))?;
        B64.decode(text).map(Zeroizing::new).map_err(|_| KeyError::Crypto("the custodian's answer is not base64"))
    }

    async fn key(&self, path: &str, receipt: &Receipt) -> Result<DataKey, KeyError> {
        let answer = self.post(path, &json!(WireReceipt::of(receipt, &self.index))).await?;
        DataKey::from_slice(&Self::field(&answer, "key")?)
    }
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

    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError> {
        let answer = self.post("/v1/data-keys/destroy", &json!(WireReceipt::of(receipt, &self.index))).await?;
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

    async fn pseudonym(&self, purpose: &str, destination: &str, input: &[u8]) -> Result<String, KeyError> {
        let body = json!({ "purpose": purpose, "destination": destination, "input": B64.encode(input) });
        let answer = self.post("/v1/pseudonym", &body).await?;
        answer
            .get("token")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
            .ok_or(KeyError::Crypto("the custodian's answer lacks a token"))
    }
}
