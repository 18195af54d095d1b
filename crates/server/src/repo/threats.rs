//! What the guard records: threats (`/threats/<finding id>-<first ms>`) and the images it
//! quarantined (`/quarantine/images/<image>`).

use firefleet_api::{QuarantinedImage, Threat};
use firefleet_store::{Revision, StoreError};

use super::{encode, get_json, list_json, Db, RepoError};

const THREATS: &str = "/threats/";
const QUARANTINE: &str = "/quarantine/images/";

fn threat_key(id: &str) -> String {
    format!("{THREATS}{id}")
}

fn quarantine_key(image: &str) -> String {
    format!("{QUARANTINE}{image}")
}

/// Threat `id` with its revision, if it is stored.
pub async fn get_threat(db: &impl Db, id: &str) -> Result<Option<(Threat, Revision)>, RepoError> {
    get_json::<Threat>(db, &threat_key(id)).await
}

/// Every stored threat.
pub async fn list_threats(db: &impl Db) -> Result<Vec<Threat>, RepoError> {
    Ok(list_json::<Threat>(db, THREATS).await?.0)
}

/// Stores a new threat; false when one of its id is stored (or the store refused the write).
pub async fn create_threat(db: &impl Db, t: &Threat) -> Result<bool, RepoError> {
    let value = encode(t)?;
    Ok(db
        .store()
        .compare_and_swap(&threat_key(&t.id), 0, value)
        .await
        .is_ok())
}

/// Writes threat `t` if its record is still at `rev`; false when it changed meanwhile.
pub async fn update_threat(db: &impl Db, t: &Threat, rev: Revision) -> Result<bool, RepoError> {
    match db
        .store()
        .compare_and_swap(&threat_key(&t.id), rev, encode(t)?)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes threat `id`.
pub async fn delete_threat(db: &impl Db, id: &str) -> Result<(), RepoError> {
    db.store().delete(&threat_key(id), None).await?;
    Ok(())
}

/// The quarantine of `image`, if it is quarantined.
pub async fn get_quarantine(
    db: &impl Db,
    image: &str,
) -> Result<Option<QuarantinedImage>, RepoError> {
    Ok(get_json::<QuarantinedImage>(db, &quarantine_key(image))
        .await?
        .map(|(q, _)| q))
}

/// Every quarantined image.
pub async fn list_quarantined(db: &impl Db) -> Result<Vec<QuarantinedImage>, RepoError> {
    Ok(list_json::<QuarantinedImage>(db, QUARANTINE).await?.0)
}

/// Quarantines an image unless it is already: a quarantine in force stays as it was. Whether
/// this one was stored (false also when the store refused the write).
pub async fn quarantine_image(db: &impl Db, q: &QuarantinedImage) -> Result<bool, RepoError> {
    let value = encode(q)?;
    Ok(db
        .store()
        .compare_and_swap(&quarantine_key(&q.image), 0, value)
        .await
        .is_ok())
}

/// Lifts an image's quarantine; false when it was not quarantined.
pub async fn release_image(db: &impl Db, image: &str) -> Result<bool, RepoError> {
    Ok(db
        .store()
        .delete(&quarantine_key(image), None)
        .await?
        .is_some())
}
