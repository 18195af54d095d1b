//! Policies, tenants' attributes, compliance, and the admission warnings of creates.

use firefleet_api::{
    ApplyPolicyRequest, ComplianceList, ComplianceReport, DeployFunctionRequest, FunctionView,
    PolicyList, PolicyRecord, TenantList, TenantRecord, WARNING_HEADER,
};
use reqwest::Method;

use crate::failover::{Attempts, Replay};
use crate::transport::{empty_body, enc};
use crate::{Client, ClientError};

impl Client {
    /// `POST /v1/functions`; also returns the warnings of policies in `warn` mode it violates.
    /// A deploy is an upsert (the same spec again changes nothing): sent again on failover.
    pub async fn deploy_function_with_warnings(
        &self,
        req: &DeployFunctionRequest,
    ) -> Result<(FunctionView, Vec<String>), ClientError> {
        let path = "/v1/functions";
        let (value, headers) = self
            .exchange(
                Method::POST,
                path,
                Some(req),
                Replay::Always,
                &mut Attempts::default(),
            )
            .await?;
        let value = value.ok_or_else(|| empty_body(path.to_owned()))?;
        Ok((value, warnings(&headers)))
    }

    /// `GET /v1/policies`.
    pub async fn policy_list(&self) -> Result<PolicyList, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/policies", None)
            .await
    }

    /// `POST /v1/policies`: adds or replaces a policy (admin); sent again on failover.
    pub async fn policy_apply(
        &self,
        req: &ApplyPolicyRequest,
    ) -> Result<PolicyRecord, ClientError> {
        self.idempotent_post("/v1/policies", Some(req)).await
    }

    /// `GET /v1/policies/{name}` (names such as `admission/resource_limits`).
    pub async fn policy_get(&self, name: &str) -> Result<PolicyRecord, ClientError> {
        self.call_required_body::<(), _>(Method::GET, &policy_path(name), None)
            .await
    }

    /// `DELETE /v1/policies/{name}` (admin).
    pub async fn policy_delete(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_body::<()>(Method::DELETE, &policy_path(name), None)
            .await
    }

    /// `GET /v1/tenants`: the tenants with attributes set.
    pub async fn tenant_list(&self) -> Result<TenantList, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/tenants", None)
            .await
    }

    /// `PUT /v1/tenants/{id}`: sets a tenant's class and regions (admin).
    pub async fn tenant_put(&self, tenant: &TenantRecord) -> Result<TenantRecord, ClientError> {
        self.call_required_body(
            Method::PUT,
            &format!("/v1/tenants/{}", enc(&tenant.id)),
            Some(tenant),
        )
        .await
    }

    /// `GET /v1/compliance`: every VM's and node's latest evaluation.
    pub async fn compliance_list(&self) -> Result<ComplianceList, ClientError> {
        self.call_required_body::<(), _>(Method::GET, "/v1/compliance", None)
            .await
    }

    /// `GET /v1/compliance/report[?tenant=T]`.
    pub async fn compliance_report(
        &self,
        tenant: Option<&str>,
    ) -> Result<ComplianceReport, ClientError> {
        let path = match tenant {
            Some(t) => format!("/v1/compliance/report?tenant={}", enc(t)),
            None => "/v1/compliance/report".to_owned(),
        };
        self.call_required_body::<(), _>(Method::GET, &path, None)
            .await
    }
}

/// The warnings in an answer's `warning` headers.
pub(crate) fn warnings(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(WARNING_HEADER)
        .iter()
        .map(|v| warning_text(&String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

/// `/v1/policies/<name>`, each `/`-separated part of the name encoded, the slashes kept.
fn policy_path(name: &str) -> String {
    let parts: Vec<String> = name.split('/').map(enc).collect();
    format!("/v1/policies/{}", parts.join("/"))
}

/// The text of a `warning` header value `299 - "<text>"` (RFC 7234: code, agent, quoted text,
/// optional date); a value not in that form is returned as it is.
fn warning_text(value: &str) -> String {
    let value = value.trim();
    let quoted = value
        .split_once(' ')
        .filter(|(code, _)| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(_, rest)| rest.trim_start().split_once(' '))
        .map(|(_agent, rest)| rest.trim_start())
        .and_then(|rest| rest.strip_prefix('"'));
    let Some(quoted) = quoted else {
        return value.to_owned();
    };
    let mut text = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return text,
            '\\' => match chars.next() {
                Some(escaped) => text.push(escaped),
                None => break,
            },
            c => text.push(c),
        }
    }
    // No closing quote: not the form we know.
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_headers_give_their_text() {
        assert_eq!(
            warning_text(r#"299 - "admission/egress_limited: no egress limit""#),
            "admission/egress_limited: no egress limit"
        );
        assert_eq!(
            warning_text(r#"299 - "a \"quoted\" word" "Sat, 01 Jan 2000 00:00:00 GMT""#),
            r#"a "quoted" word"#
        );
        assert_eq!(warning_text("just text"), "just text");
        assert_eq!(
            warning_text(r#"299 - "unterminated"#),
            r#"299 - "unterminated"#
        );
    }

    #[test]
    fn policy_names_keep_their_slash() {
        assert_eq!(
            policy_path("admission/resource_limits"),
            "/v1/policies/admission/resource_limits"
        );
        assert_eq!(policy_path("host/a b"), "/v1/policies/host/a%20b");
    }
}
