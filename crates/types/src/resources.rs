//! Compute resources a VM asks for and a node offers.

use crate::validate::ValidationError;

/// Most vCPUs one VM may have.
pub const MAX_VCPUS: u32 = 64;
/// Least memory a VM may have: the guest kernel and initramfs need this much.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most memory one VM may have (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;

/// Resources of a VM (requested) or a node (capacity). The JSON shape `{vcpus, memory_mib}` is
/// what the API takes, the CLI prints and policies see.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
}

impl Resources {
    /// Validates a VM's request; errors name `resources.<field>`.
    pub fn validate_request(&self) -> Result<(), ValidationError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ValidationError::new(
                "resources.vcpus",
                format!("must be between 1 and {MAX_VCPUS}, got {}", self.vcpus),
            ));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > MAX_MEMORY_MIB {
            return Err(ValidationError::new(
                "resources.memory_mib",
                format!(
                    "must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {}",
                    self.memory_mib
                ),
            ));
        }
        Ok(())
    }

    /// Whether `self` (free capacity) can hold `want`.
    #[must_use]
    pub fn fits(&self, want: &Resources) -> bool {
        self.vcpus >= want.vcpus && self.memory_mib >= want.memory_mib
    }

    /// `self - other`, saturating at zero.
    #[must_use]
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    /// `self + other`, saturating.
    #[must_use]
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field() {
        let ok = Resources {
            vcpus: 1,
            memory_mib: 256,
        };
        assert!(ok.validate_request().is_ok());
        assert_eq!(
            Resources { vcpus: 0, ..ok }
                .validate_request()
                .unwrap_err()
                .field,
            "resources.vcpus"
        );
        assert_eq!(
            Resources {
                memory_mib: u64::MAX,
                ..ok
            }
            .validate_request()
            .unwrap_err()
            .field,
            "resources.memory_mib"
        );
        assert!(serde_json::from_str::<Resources>(r#"{"vcpus":-1,"memory_mib":1}"#).is_err());
    }
}
