//! Typed identities. Every id is a validated string newtype; construction goes through
//! [`std::str::FromStr`] (or serde, which uses the same check), so an invalid id cannot exist.

use std::fmt;

use crate::validate::{check_name, ValidationError};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id; the error names `field`.
            pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
                check_name(field, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The id as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse($what, s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse($what, &s).map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// A VM's id: unique in the cluster, chosen by the control plane.
    VmId,
    "vm_id"
);
typed_id!(
    /// A node's id: its name, given when the agent enrolls.
    NodeId,
    "node"
);
typed_id!(
    /// A tenant: the unit of ownership and authorisation.
    TenantId,
    "tenant"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_names_and_name_the_field() {
        let err = VmId::parse("name", "Bad Name").unwrap_err();
        assert_eq!(err.field, "name");
        assert!("ok-name-1".parse::<TenantId>().is_ok());
        assert!(serde_json::from_str::<NodeId>("\"UPPER\"").is_err());
    }
}
