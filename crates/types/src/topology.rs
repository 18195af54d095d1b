//! Labels, including the topology labels (`cloud`, `region`, `zone`, `site`) nodes carry.

use std::collections::BTreeMap;

use crate::validate::{check_name, ValidationError};

/// Key/value labels. Keys are names (optionally with a `prefix/`), values are at most 63
/// printable characters.
pub type Labels = BTreeMap<String, String>;

/// Most labels on one object.
pub const MAX_LABELS: usize = 64;

/// Validates labels; errors name `field.<key>`.
pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in labels {
        let key_part = k.rsplit('/').next().unwrap_or(k);
        check_name(&format!("{field}.{k}"), key_part)?;
        if v.len() > 63 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                format!("{field}.{k}"),
                "value must be at most 63 printable ASCII characters without whitespace",
            ));
        }
    }
    Ok(())
}

/// Parses `k=v` (as given on the command line) into a pair.
pub fn parse_label(s: &str) -> Result<(String, String), ValidationError> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        ValidationError::new("label", format!("{s:?} is not of the form key=value"))
    })?;
    let mut one = Labels::new();
    one.insert(k.to_owned(), v.to_owned());
    validate_labels("labels", &one)?;
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_parsing() {
        assert_eq!(
            parse_label("cloud=aws").unwrap(),
            ("cloud".into(), "aws".into())
        );
        assert!(parse_label("cloud").is_err());
        assert!(parse_label("Cloud=aws").is_err());
        assert!(parse_label("region=us east").is_err());
    }
}
