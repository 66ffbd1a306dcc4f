//! What the export endpoints share (`POST /v1/me/export`, `POST /v1/subjects/{id}/export`): the
//! body they take and the archive they answer with.

use axum::response::Response;
use utoipa::ToSchema;

use crate::problem::ApiError;

/// What an export asks for.
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// An `age` X25519 recipient (`age1...`, from `age-keygen`): the archive is then encrypted to
    /// it, so that only the holder of the matching identity opens it (`age -d -i key.txt`).
    #[schema(
        example = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
        pattern = "^age1[02-9ac-hj-np-z]{58}$"
    )]
    pub age_recipient: Option<String>,
}

/// The archive of a built export, streamed from its temporary file, which is gone once the
/// answer is: the boundary keeps no copy.
pub(crate) fn export_response(export: crate::subjects::export::Export) -> Result<Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let file = export.file.reopen().map_err(ApiError::internal)?;
    // Unlinked now; the open file is read to the end by the stream below.
    drop(export.file);
    let stream = futures_util::stream::unfold(Some(tokio::fs::File::from_std(file)), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let name = format!("clover-export-{}.zip{}", export.export_id, if export.encrypted { ".age" } else { "" });
    let kind = if export.encrypted { "application/octet-stream" } else { "application/zip" };
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    let value = |v: String| axum::http::HeaderValue::from_str(&v).map_err(ApiError::internal);
    headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_LENGTH, value(export.size.to_string())?);
    headers.insert(header::CONTENT_DISPOSITION, value(format!("attachment; filename=\"{name}\""))?);
    headers.insert("x-clover-export-id", value(export.export_id.clone())?);
    headers.insert("x-clover-export-records", value(export.records.to_string())?);
    headers.insert("x-clover-export-sha256", value(export.sha256.clone())?);
    headers.insert("x-clover-log-index", value(export.log_index.to_string())?);
    response.extensions_mut().insert(crate::problem::DecisionLabel(export.decision.effect()));
    Ok(response)
}
