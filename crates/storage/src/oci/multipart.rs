//! Multipart uploads: CreateMultipartUpload, UploadPart, CommitMultipartUpload,
//! AbortMultipartUpload.
//!
//! Invariant: a commit lists exactly the parts that were uploaded, in ascending part number,
//! each with the etag Object Storage returned for it; it is refused locally if a part is still
//! in flight or failed (the caller awaits every part before `complete`).

use super::{Attr, Body, Client, STORE, generic, header_str};
use crate::lock;
use async_trait::async_trait;
use http::{HeaderMap, Method};
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use url::Url;

/// Object Storage numbers parts 1 to 10,000.
const MAX_PARTS: u32 = 10_000;

#[derive(Debug)]
pub(super) struct Upload {
    client: Arc<Client>,
    name: String,
    /// `…/u/<name>?uploadId=<id>`: the part, commit and abort URL without part number.
    url: Url,
    /// Parts handed out so far; the next part gets `sent + 1`.
    sent: u32,
    /// `(part number, etag)` of every part uploaded successfully.
    done: Arc<Mutex<Vec<(u32, String)>>>,
}

impl Upload {
    pub(super) async fn create(
        client: Arc<Client>,
        name: &str,
        attributes: Vec<Attr<'_>>,
    ) -> object_store::Result<Self> {
        let mut document = Map::new();
        document.insert("object".into(), name.into());
        let mut metadata = Map::new();
        for attribute in attributes {
            match attribute {
                Attr::Field { field, value, .. } => {
                    document.insert(field.into(), value.into());
                }
                Attr::Meta(key, value) => {
                    metadata.insert(key.into(), value.into());
                }
            }
        }
        if !metadata.is_empty() {
            document.insert("metadata".into(), Value::Object(metadata));
        }
        let response = client
            .send(
                "CreateMultipartUpload",
                Method::POST,
                &client.url("u", ""),
                HeaderMap::new(),
                Body::Json(Value::Object(document).to_string().into_bytes()),
            )
            .await
            .map_err(|e| e.into_store(name))?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            upload_id: String,
        }
        let created: Created = response
            .json()
            .await
            .map_err(|e| generic(format!("CreateMultipartUpload {name}: {e}")))?;
        let mut url = client.url("u", name);
        url.query_pairs_mut()
            .append_pair("uploadId", &created.upload_id);
        Ok(Self {
            client,
            name: name.to_string(),
            url,
            sent: 0,
            done: Arc::new(Mutex::new(Vec::new())),
        })
    }
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.sent += 1;
        let number = self.sent;
        let (client, name, done) = (self.client.clone(), self.name.clone(), self.done.clone());
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("uploadPartNum", &number.to_string());
        Box::pin(async move {
            if number > MAX_PARTS {
                return Err(generic(format!(
                    "{name}: part {number} exceeds Object Storage's {MAX_PARTS} parts"
                )));
            }
            // No if-match here: on UploadPart it would apply to the part and fail.
            let response = client
                .send(
                    "UploadPart",
                    Method::PUT,
                    &url,
                    HeaderMap::new(),
                    Body::Data(data.into()),
                )
                .await
                .map_err(|e| e.into_store(&name))?;
            let etag = header_str(&response, "etag")
                .ok_or_else(|| generic(format!("UploadPart {name} #{number}: no etag")))?;
            lock(&done).push((number, etag.to_string()));
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.sent == 0 {
            // Object Storage commits at least one part; an empty object is one empty part.
            self.put_part(PutPayload::default()).await?;
        }
        let mut parts = lock(&self.done).clone();
        parts.sort_unstable();
        if parts.len() != self.sent as usize {
            return Err(generic(format!(
                "{}: {} parts were started but {} finished; await every part before completing",
                self.name,
                self.sent,
                parts.len()
            )));
        }
        let document = json!({
            "partsToCommit": parts
                .iter()
                .map(|(number, etag)| json!({"partNum": number, "etag": etag}))
                .collect::<Vec<_>>(),
        });
        let response = self
            .client
            .send(
                "CommitMultipartUpload",
                Method::POST,
                &self.url,
                HeaderMap::new(),
                Body::Json(document.to_string().into_bytes()),
            )
            .await
            .map_err(|e| e.into_store(&self.name))?;
        Ok(PutResult {
            e_tag: header_str(&response, "etag").map(str::to_string),
            version: header_str(&response, "version-id").map(str::to_string),
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.client
            .send(
                "AbortMultipartUpload",
                Method::DELETE,
                &self.url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await
            .map_err(|e| e.into_store(&self.name))?;
        tracing::debug!(store = STORE, name = %self.name, "multipart upload aborted");
        Ok(())
    }
}
