//! Errors and bodies of the HTTP routes: every error is `{"error": "…"}` with a status
//! code and a message that says what to do; JSON bodies and query strings fail that way too.

use crate::store::StoreError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answered as `{"error": "…"}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and a message that says what to do.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server's store failed ({e}); see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// A JSON body whose every failure (too large, malformed, unknown field) is an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this route accepts: send less at once",
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rej}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body into `T`, with an error that says where it went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "invalid JSON body"
        } else {
            "malformed JSON"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

pub(crate) fn checked_id(id: &str) -> Result<(), ApiError> {
    if crate::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid rule id {id:?}: ids are 1-64 letters, digits, `-`, `_` or `.`; list them with GET /api/v1/rules"
        )))
    }
}
