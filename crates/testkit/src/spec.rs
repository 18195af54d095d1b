//! VM spec fixtures.

use serde_json::{json, Value};

/// A well-formed image digest that no image store holds (`sha256:` and 64 `a`s): the server
/// accepts it, no agent can run it. The same as the unit tests' (`firefleet_types::fixtures`).
pub use firefleet_types::fixtures::TEST_IMAGE;

/// The smallest valid `POST /v1/vms` body: `name`, [`TEST_IMAGE`], 1 vCPU, 256 MiB.
pub fn vm_spec(name: &str) -> Value {
    json!({ "name": name, "image": TEST_IMAGE, "resources": { "vcpus": 1, "memory_mib": 256 } })
}

/// [`vm_spec`] with `fields` merged in at the top level (replacing what is there).
pub fn vm_spec_with(name: &str, fields: Value) -> Value {
    let mut spec = vm_spec(name);
    if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), fields) {
        s.extend(extra);
    }
    spec
}

/// The smallest `POST /v1/functions` body: `name`, [`TEST_IMAGE`] running `cat`, 1 vCPU,
/// 128 MiB, at most 2 instances.
pub fn function_spec(name: &str) -> Value {
    json!({ "name": name, "image": TEST_IMAGE, "cmd": ["cat"],
        "resources": { "vcpus": 1, "memory_mib": 128 }, "max": 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_a_full_digest() {
        let hex = TEST_IMAGE.strip_prefix("sha256:").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.chars().all(|c| c == 'a'));
    }

    #[test]
    fn fields_merge_over_the_base() {
        let s = vm_spec_with("w", json!({ "cmd": ["cat"], "resources": { "vcpus": 2 } }));
        assert_eq!(s["name"], "w");
        assert_eq!(s["cmd"][0], "cat");
        assert_eq!(s["resources"]["vcpus"], 2);
        assert_eq!(s["image"], TEST_IMAGE);
    }
}
