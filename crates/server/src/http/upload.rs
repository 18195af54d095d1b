//! Storing large uploads (snapshot archives) from agents, bounded: an agent is another node,
//! and what it sends is written to this server's disk.

use std::path::Path;

use axum::body::{Body, HttpBody};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::ApiError;

/// Streams `body` into `path` (written as `<path>.part`, fsynced, renamed), refusing it with
/// [`ApiError::TooLarge`] once it passes `limit` bytes (at once when its length says so).
/// A refused or failed upload leaves no file behind. Returns the bytes stored.
pub(crate) async fn store_bounded(body: Body, path: &Path, limit: u64) -> Result<u64, ApiError> {
    let too_large = || ApiError::TooLarge {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let io = |e: std::io::Error| ApiError::Internal(format!("storing the upload: {e}"));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let part = path.with_extension("part");
    let written = async {
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut stream = body.into_data_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::Internal(format!("reading the upload: {e}")))?;
            bytes = bytes.saturating_add(chunk.len() as u64);
            if bytes > limit {
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(bytes)
    }
    .await;
    let stored = match written {
        Ok(bytes) => tokio::fs::rename(&part, path)
            .await
            .map(|()| bytes)
            .map_err(io),
        Err(e) => Err(e),
    };
    if stored.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: usize, size: usize) -> Body {
        let s = futures::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![7u8; size])),
        );
        Body::from_stream(s)
    }

    #[tokio::test]
    async fn an_upload_past_the_limit_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t").join("vm-s.tar");
        // Streamed (no length known in advance): refused when it passes the limit.
        let e = store_bounded(chunked(5, 1000), &path, 4500)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::TooLarge { limit: 4500 }), "{e:?}");
        // With its length announced: refused before anything is written.
        let e = store_bounded(Body::from(vec![0u8; 4501]), &path, 4500)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::TooLarge { .. }), "{e:?}");
        assert!(!path.exists() && !path.with_extension("part").exists());

        assert_eq!(
            store_bounded(chunked(4, 1000), &path, 4000).await.unwrap(),
            4000
        );
        assert_eq!(std::fs::read(&path).unwrap().len(), 4000);
        assert!(!path.with_extension("part").exists());
    }
}
