//! Schemas that state what the server checks, for the OpenAPI document only (re-exported by
//! `firefleet_api`): request fields name these with `#[schema(value_type = ...)]` where the wire type (shared with answers, or
//! a map) cannot carry the constraint itself. The checks are in this crate
//! (`check_name`, `Resources::validate_request`, `validate_labels`); keep the two in step.

use std::borrow::Cow;

use utoipa::openapi::{schema::AdditionalProperties, ObjectBuilder, RefOr, Schema, Type};

/// A DNS-label-like name (`firefleet_types::validate::check_name`): 1..=63 of `[a-z0-9-]`,
/// starting and ending with a letter or digit.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

/// An image digest: `sha256:` and 64 lowercase hex digits.
pub const DIGEST_PATTERN: &str = "^sha256:[0-9a-f]{64}$";

/// What a VM or a function may ask for (`Resources::validate_request`). Answers carry
/// `Resources`, which also holds nodes' capacities and has no bounds.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ResourceRequest {
    /// Virtual CPUs.
    #[schema(minimum = 1, maximum = 64)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[schema(minimum = 64, maximum = 1048576)]
    memory_mib: u64,
}

/// Labels as a request gives them (`firefleet_types::topology::validate_labels`): at most 64;
/// each key an optional `prefix/` and a name, each value at most 63 printable ASCII characters.
pub struct LabelRequest;

impl utoipa::PartialSchema for LabelRequest {
    fn schema() -> RefOr<Schema> {
        let value = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(63))
            .pattern(Some("^[!-~]*$"));
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^([^/]*/)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"));
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .max_properties(Some(64))
                .property_names(Some(key))
                .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
                    value.build(),
                )))))
                .build(),
        ))
    }
}

impl utoipa::ToSchema for LabelRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LabelRequest")
    }
}

/// A name as a request gives it ([`NAME_PATTERN`]).
pub struct NameRequest;

impl utoipa::PartialSchema for NameRequest {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(name().build()))
    }
}

impl utoipa::ToSchema for NameRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("NameRequest")
    }
}

fn name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NAME_PATTERN))
        .min_length(Some(1))
        .max_length(Some(63))
}

/// A guest command (`firefleet_types::vm::validate_cmd`): 1..=64 arguments without NUL (and
/// at most 1024 bytes in all, which a schema cannot say).
pub struct CommandRequest;

impl utoipa::PartialSchema for CommandRequest {
    fn schema() -> RefOr<Schema> {
        let arg = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[^\\u0000]*$"));
        RefOr::T(Schema::Array(
            utoipa::openapi::schema::ArrayBuilder::new()
                .items(arg)
                .min_items(Some(1))
                .max_items(Some(64))
                .build(),
        ))
    }
}

impl utoipa::ToSchema for CommandRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CommandRequest")
    }
}
