//! Validation primitives. Every check is a pure function returning a [`ValidationError`] that
//! names the field that was wrong, so the API can answer with a 4xx naming it.

/// A field of a request or spec was invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The path of the offending field, e.g. `resources.memory_mib`.
    pub field: String,
    /// What was wrong with it.
    pub message: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The longest name (VM, node, tenant, label key) we accept.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a DNS-label-like name: 1..=63 chars of `[a-z0-9-]`, starting and ending with an
/// alphanumeric.
pub fn check_name(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ValidationError::new(
            field,
            format!("{s:?} may contain only lowercase letters, digits and '-'"),
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(ValidationError::new(
            field,
            format!("{s:?} must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("n", "a").is_ok());
        assert!(check_name("n", "web-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            let e = check_name("n", bad).unwrap_err();
            assert_eq!(e.field, "n", "{bad}");
        }
    }
}
