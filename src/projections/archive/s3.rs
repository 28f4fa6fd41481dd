//! The archive on S3 or an S3-compatible store, through `aws-sdk-s3`.
//!
//! Credentials come from the standard AWS chain (environment, profile, instance or
//! container role). For S3-compatible stores set an endpoint and path-style
//! addressing. Objects larger than [`MULTIPART_THRESHOLD`] are uploaded in parts; a
//! failed multipart upload is aborted, so no half object ever becomes visible.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use super::store::StoreError;

/// Bodies at least this large are sent as a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part but the last (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `parkade/archive`. Default: none.
    #[serde(default)]
    pub prefix: String,
    /// Region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint override for S3-compatible stores, e.g. `http://127.0.0.1:3900`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible stores.
    #[serde(default)]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn remote(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        op,
        key: key.to_owned(),
        message: e.to_string(),
    }
}

impl S3Store {
    /// Build a client from the standard AWS configuration chain and `cfg`.
    pub async fn connect(cfg: &S3Config) -> S3Store {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(cfg.region.clone()))
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.path_style);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
        }
    }

    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let full = self.key(key);
        if body.len() < MULTIPART_THRESHOLD {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| remote("put", &full, aws_sdk_s3::error::DisplayErrorContext(e)))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| {
                remote(
                    "start multipart upload of",
                    &full,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let id = upload.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts(&full, &id, &body).await;
        if result.is_err() {
            // Leave nothing behind: an aborted upload never becomes an object.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(&self, full: &str, id: &str, body: &[u8]) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
            let number = i32::try_from(i + 1).map_err(|e| remote("upload part of", full, e))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    remote(
                        "upload part of",
                        full,
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    )
                })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                remote(
                    "complete multipart upload of",
                    full,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = self.key(key);
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => {
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| remote("read", &full, e))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    Ok(None)
                } else {
                    Err(remote(
                        "get",
                        &full,
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    ))
                }
            }
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| remote("list", &full, aws_sdk_s3::error::DisplayErrorContext(e)))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|k| k[strip..].to_owned()),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| remote("delete", &full, aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}
