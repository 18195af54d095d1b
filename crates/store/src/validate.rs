//! Limits on keys and values, checked by every backend before it touches storage.

use std::collections::HashSet;

use crate::error::InvalidKeyReason;
use crate::{Compare, Op, StoreError};

/// Longest key (and list/watch prefix), in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// How much of an offending key is kept in an error.
const KEY_EXCERPT_LEN: usize = 64;

fn excerpt(key: &str) -> String {
    if key.len() <= KEY_EXCERPT_LEN {
        return key.to_owned();
    }
    let mut end = KEY_EXCERPT_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &key[..end])
}

fn invalid(key: &str, reason: InvalidKeyReason) -> StoreError {
    StoreError::InvalidKey {
        key: excerpt(key),
        reason,
    }
}

/// Checks a key: non-empty, at most [`MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(invalid(key, InvalidKeyReason::Empty));
    }
    validate_prefix(key)
}

/// Checks a list/watch prefix: may be empty (everything), at most [`MAX_KEY_LEN`] bytes.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(invalid(
            prefix,
            InvalidKeyReason::TooLong { len: prefix.len() },
        ));
    }
    Ok(())
}

/// Checks a value's size against [`MAX_VALUE_LEN`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::TooLarge {
            key: excerpt(key),
            size: value.len(),
            limit: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// Checks a key and a value for a put.
pub fn validate_put(key: &str, value: &[u8]) -> Result<(), StoreError> {
    validate_key(key)?;
    validate_value(key, value)
}

/// Checks every compare and both op branches of a transaction; a key may appear in at most
/// one op of a branch (as in etcd).
pub fn validate_txn(
    compares: &[Compare],
    success: &[Op],
    failure: &[Op],
) -> Result<(), StoreError> {
    for compare in compares {
        validate_key(compare.key())?;
    }
    for branch in [success, failure] {
        let mut seen = HashSet::new();
        for op in branch {
            match op {
                Op::Put { key, value } => validate_put(key, value)?,
                Op::Delete { key } => validate_key(key)?,
            }
            if !seen.insert(op.key()) {
                return Err(invalid(op.key(), InvalidKeyReason::DuplicateInTxn));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("/a").is_ok());
        assert!(matches!(
            validate_key(""),
            Err(StoreError::InvalidKey {
                reason: InvalidKeyReason::Empty,
                ..
            })
        ));
        let long = "é".repeat(MAX_KEY_LEN);
        match validate_key(&long) {
            Err(StoreError::InvalidKey { key, reason }) => {
                assert_eq!(
                    reason,
                    InvalidKeyReason::TooLong {
                        len: 2 * MAX_KEY_LEN
                    }
                );
                assert!(key.len() <= KEY_EXCERPT_LEN + 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_prefix("").is_ok());
    }

    #[test]
    fn values_are_checked() {
        assert!(validate_value("/k", &vec![0; MAX_VALUE_LEN]).is_ok());
        assert!(matches!(
            validate_value("/k", &vec![0; MAX_VALUE_LEN + 1]),
            Err(StoreError::TooLarge { size, .. }) if size == MAX_VALUE_LEN + 1
        ));
    }

    #[test]
    fn duplicate_keys_in_one_branch_are_refused() {
        let put = |k: &str| Op::Put {
            key: k.into(),
            value: vec![],
        };
        assert!(validate_txn(&[], &[put("/a"), put("/b")], &[put("/a")]).is_ok());
        assert!(matches!(
            validate_txn(&[], &[put("/a"), Op::Delete { key: "/a".into() }], &[]),
            Err(StoreError::InvalidKey {
                reason: InvalidKeyReason::DuplicateInTxn,
                ..
            })
        ));
    }
}
