//! Serverless functions: the spec a user deploys, the status the functions controller keeps,
//! and the link from a function's instance VMs back to it.
//!
//! A function's instances are microVMs. On deploy the controller boots one VM (the template),
//! snapshots it once it is ready, and stops it: every instance after that is restored from that
//! snapshot (a cold start), and instances come and go as the autoscaler decides.

use crate::{
    ids::{TenantId, VmId},
    resources::Resources,
    validate::{check_name, ValidationError},
    vm::{validate_cmd, validate_image_ref, VmRuntime},
    Generation, UnixMillis,
};

/// Most instances one function may have.
pub const MAX_INSTANCES: u32 = 1000;
/// Most invocations in flight on one instance.
pub const MAX_CONCURRENCY: u32 = 1000;
/// The longest an invocation may run, in milliseconds (15 minutes).
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Default invocation timeout, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// What a function is, as deployed through the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Name, unique per tenant.
    pub name: String,
    /// Owner.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Image digest (`sha256:<hex>`).
    pub image: String,
    /// The handler. Without `http_port`: a command run once per invocation, the request on
    /// its standard input, the response its standard output (exit status 0: success). With
    /// `http_port`: the instance's workload, started at boot, listening on that port inside the
    /// guest; each invocation is POSTed to it.
    pub cmd: Vec<String>,
    /// The port the workload listens on inside the guest (HTTP mode).
    #[serde(default)]
    pub http_port: Option<u16>,
    /// The path requests are POSTed to in HTTP mode (default `/`).
    #[serde(default)]
    pub http_path: Option<String>,
    /// Resources of each instance.
    pub resources: Resources,
    /// Invocations in flight on one instance at most.
    pub concurrency: u32,
    /// Warm instances kept at least (0: the function scales to zero).
    #[serde(default)]
    pub min: u32,
    /// Instances at most.
    pub max: u32,
    /// Regions (or edge sites) its instances run in; empty: anywhere. Invocations go to the
    /// nearest warm instance.
    #[serde(default)]
    pub regions: Vec<String>,
    /// How long one invocation may run, milliseconds (default 30000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Keep an idle instance this long at least (seconds); none: the autoscaler decides.
    #[serde(default)]
    pub keep_alive_secs: Option<u64>,
    /// The VMM its instances run on.
    #[serde(default)]
    pub runtime: VmRuntime,
    /// End users may invoke it without a token (the plain route `/fn/{tenant}/{name}`).
    #[serde(default)]
    pub public: bool,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl FunctionSpec {
    /// Validates every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("name", &self.name)?;
        validate_image_ref("image", &self.image)?;
        validate_cmd(&self.cmd)?;
        self.resources.validate_request()?;
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(ValidationError::new(
                "concurrency",
                format!("{}: must be 1..={MAX_CONCURRENCY}", self.concurrency),
            ));
        }
        if self.max == 0 || self.max > MAX_INSTANCES {
            return Err(ValidationError::new(
                "max",
                format!("{}: must be 1..={MAX_INSTANCES}", self.max),
            ));
        }
        if self.min > self.max {
            return Err(ValidationError::new(
                "min",
                format!("{} is above max ({})", self.min, self.max),
            ));
        }
        if self.http_port == Some(0) {
            return Err(ValidationError::new("http_port", "must be 1..=65535"));
        }
        if let Some(p) = &self.http_path {
            if self.http_port.is_none() {
                return Err(ValidationError::new(
                    "http_path",
                    "only with http_port (HTTP mode)",
                ));
            }
            if !p.starts_with('/') || p.len() > 256 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(ValidationError::new(
                    "http_path",
                    format!("{p:?}: must start with / and hold no spaces or control characters (at most 256 bytes)"),
                ));
            }
        }
        for (i, r) in self.regions.iter().enumerate() {
            check_name(&format!("regions[{i}]"), r)?;
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ValidationError::new(
                "timeout_ms",
                format!("{}: must be 1..={MAX_TIMEOUT_MS}", self.timeout_ms),
            ));
        }
        if self.keep_alive_secs.is_some_and(|k| k > 24 * 3600) {
            return Err(ValidationError::new(
                "keep_alive_secs",
                "at most 86400 (one day)",
            ));
        }
        Ok(())
    }

    /// How an invocation reaches the handler.
    #[must_use]
    pub fn handler(&self) -> FunctionHandler {
        match self.http_port {
            Some(port) => FunctionHandler::Http {
                port,
                path: self.http_path.clone().unwrap_or_else(|| "/".to_owned()),
            },
            None => FunctionHandler::Command {
                argv: self.cmd.clone(),
            },
        }
    }
}

/// How an invocation reaches a function's code inside an instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FunctionHandler {
    /// Run this command per invocation: request on stdin, response on stdout.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// POST the request to the workload listening on this port inside the guest.
    Http {
        /// Port.
        port: u16,
        /// Path.
        path: String,
    },
}

/// Where a function is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FunctionPhase {
    /// Its template instance is booting or being snapshotted.
    Deploying,
    /// It has a template: invocations are served (starting instances from the template).
    Ready,
    /// The template could not be made (see the message).
    Failed,
}

/// The snapshot a function's instances are restored from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FunctionTemplate {
    /// The VM that was booted and snapshotted (kept, stopped, while the function exists).
    #[schema(value_type = String)]
    pub vm: VmId,
    /// The snapshot's name.
    pub snapshot: String,
    /// When it became usable.
    pub ready_ms: UnixMillis,
}

/// What the control plane observes of a function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FunctionStatus {
    /// Phase.
    pub phase: FunctionPhase,
    /// Why it is in this phase, when that needs saying.
    #[serde(default)]
    pub message: Option<String>,
    /// The template, once made.
    #[serde(default)]
    pub template: Option<FunctionTemplate>,
}

/// A function: spec and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Function {
    /// Desired state.
    pub spec: FunctionSpec,
    /// Bumped on every change of the spec.
    #[schema(value_type = u64)]
    pub generation: Generation,
    /// Observed state.
    pub status: FunctionStatus,
    /// When it was deployed.
    pub created_ms: UnixMillis,
}

/// What ties a VM to a function (`VmSpec.function`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionInstance {
    /// The function's name (in the VM's tenant).
    pub function: String,
    /// Start by restoring this snapshot (the function's template) instead of booting; none:
    /// this VM is the template, booted.
    #[serde(default)]
    pub template: Option<TemplateRef>,
}

/// A snapshot of another VM to start from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    /// The VM the snapshot was taken of.
    #[schema(value_type = String)]
    pub vm: VmId,
    /// The snapshot's name.
    pub snapshot: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            max: 4,
            ..crate::fixtures::function_spec("echo")
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec().validate().is_ok());
        type Break = fn(&mut FunctionSpec);
        let cases: Vec<(Break, &str)> = vec![
            (|s| s.concurrency = 0, "concurrency"),
            (|s| s.max = 0, "max"),
            (|s| s.min = 9, "min"),
            (|s| s.cmd.clear(), "cmd"),
            (|s| s.http_path = Some("/x".into()), "http_path"),
            (|s| s.regions = vec!["Bad Region".into()], "regions[0]"),
            (|s| s.timeout_ms = 0, "timeout_ms"),
            (|s| s.image = "alpine".into(), "image"),
        ];
        for (f, field) in cases {
            let mut s = spec();
            f(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn handler_follows_the_mode() {
        let mut s = spec();
        assert_eq!(
            s.handler(),
            FunctionHandler::Command {
                argv: vec!["cat".into()]
            }
        );
        s.http_port = Some(8080);
        assert_eq!(
            s.handler(),
            FunctionHandler::Http {
                port: 8080,
                path: "/".into()
            }
        );
        let json = serde_json::to_value(s.handler()).unwrap();
        assert_eq!(json["kind"], "http");
    }
}
