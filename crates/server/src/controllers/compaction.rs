//! Store compaction: keeps the last [`KEEP_REVISIONS`] revisions of history (what watches can
//! resume from) so the history does not grow without bound.

use crate::{ApiError, AppState};

/// Revisions of history kept.
pub const KEEP_REVISIONS: u64 = 10_000;

pub async fn reconcile(state: AppState) -> Result<(), ApiError> {
    let rev = state.store.revision().await?;
    if rev > KEEP_REVISIONS {
        state.store.compact(rev - KEEP_REVISIONS).await?;
    }
    Ok(())
}
