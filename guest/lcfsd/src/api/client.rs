//! The client side of the API, over the daemon's unix socket (used by `lcfsd layer`).

use std::path::Path;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::ApiError;

/// Sends one request and decodes the answer; API errors become errors with their message.
pub async fn call<B: Serialize, T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> anyhow::Result<Option<T>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot reach the daemon at {} (is `lcfsd run` running?)", socket.display()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("API handshake failed")?;
    tokio::spawn(connection);
    let bytes = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "lcfsd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let response = sender.send_request(request).await.context("API request failed")?;
    let status = response.status();
    let body = response.into_body().collect().await.context("reading the API answer")?.to_bytes();
    if !status.is_success() {
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("the daemon answered {status}: {}", String::from_utf8_lossy(&body)),
        }
    }
    if status == StatusCode::NO_CONTENT || body.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&body).context("the daemon's answer is not what this client expects")?))
}
