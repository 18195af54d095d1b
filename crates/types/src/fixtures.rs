//! Spec fixtures for tests (this crate's, and other crates' with the `test-util` feature): the
//! well-formed specs every unit test starts from, so that none writes its own.

use crate::function::{FunctionSpec, DEFAULT_TIMEOUT_MS};
use crate::vm::{DesiredState, VmSpec};
use crate::Resources;

/// A well-formed image digest that no image store holds (`sha256:` and 64 `a`s).
pub const TEST_IMAGE: &str =
    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Tenant `acme`.
#[allow(clippy::expect_used)] // a constant that is a valid id
fn acme() -> crate::TenantId {
    crate::TenantId::parse("tenant", "acme").expect("a valid tenant id")
}

/// A VM `name` of tenant `acme` running [`TEST_IMAGE`] with 1 vCPU and `memory_mib`, desired
/// running; every other field its default (as a JSON spec that leaves them out).
pub fn vm_spec(name: &str, memory_mib: u64) -> VmSpec {
    VmSpec {
        name: name.to_owned(),
        tenant: acme(),
        image: TEST_IMAGE.to_owned(),
        resources: Resources {
            vcpus: 1,
            memory_mib,
        },
        labels: Default::default(),
        cmd: None,
        restart_policy: Default::default(),
        desired: DesiredState::Running,
        restore: None,
        network: Default::default(),
        runtime: Default::default(),
        disks: Vec::new(),
        placement: Default::default(),
        function: None,
    }
}

/// A function `name` of tenant `acme`: [`TEST_IMAGE`] running `cat`, 1 vCPU, 128 MiB, one
/// invocation at a time, 0 to 2 instances, the default timeout.
pub fn function_spec(name: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.to_owned(),
        tenant: acme(),
        image: TEST_IMAGE.to_owned(),
        cmd: vec!["cat".into()],
        http_port: None,
        http_path: None,
        resources: Resources {
            vcpus: 1,
            memory_mib: 128,
        },
        concurrency: 1,
        min: 0,
        max: 2,
        regions: vec![],
        timeout_ms: DEFAULT_TIMEOUT_MS,
        keep_alive_secs: None,
        runtime: Default::default(),
        public: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_are_valid_and_match_their_json_form() {
        let spec = vm_spec("web", 256);
        let json: VmSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "tenant": "acme", "image": TEST_IMAGE,
            "resources": {"vcpus": 1, "memory_mib": 256}, "desired": "running",
        }))
        .unwrap();
        assert_eq!(spec, json);
        assert_eq!(TEST_IMAGE.len(), "sha256:".len() + 64);
        assert_eq!(function_spec("echo").image, TEST_IMAGE);
    }
}
