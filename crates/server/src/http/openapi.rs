//! The answers every operation can give besides its own, added to the OpenAPI document by rule
//! rather than by hand on each handler: what the middleware and the extractors answer follows
//! from the route's shape (how it authenticates, whether it takes a JSON body, query or path
//! parameters), so the document says it wherever it can happen.
//!
//! | the route                       | can answer                                        |
//! |---------------------------------|---------------------------------------------------|
//! | any                             | 500 (`internal`)                                  |
//! | bearer token                    | 401, 403, 429 (with `Retry-After`)                |
//! | anonymous (rate-limited by address) | 429 (with `Retry-After`)                      |
//! | agent certificate               | 401, 403 (agents are not rate-limited)            |
//! | a JSON request body             | 400 (`invalid_request`), 413, 415                 |
//! | another request body            | 413                                               |
//! | query parameters                | 400 (`invalid_request`)                           |
//! | path parameters                 | 404 (and 400 where the parameter has a pattern)   |
//!
//! An answer the handler documents itself (with its own description) is kept.

use utoipa::openapi::{
    header::HeaderBuilder,
    path::{Operation, ParameterIn},
    ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Schema, Type,
};

/// Adds the common error answers (an `ErrorBody` each) to every operation.
pub(crate) struct CommonAnswers;

/// How an operation authenticates its caller, read from its `security` requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Bearer,
    AgentCertificate,
    Anonymous,
}

/// The status codes `op` can answer besides its own, by the rules of the module doc.
fn common_answers(op: &Operation) -> Vec<u16> {
    let mut codes = vec![500];
    match auth_of(op) {
        Auth::Bearer => codes.extend([401, 403, 429]),
        Auth::AgentCertificate => codes.extend([401, 403]),
        Auth::Anonymous => codes.push(429),
    }
    if let Some(body) = &op.request_body {
        if body.content.contains_key("application/json") {
            codes.extend([400, 413, 415]);
        } else {
            codes.push(413);
        }
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
        codes.push(400);
    }
    if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
        codes.push(404);
    }
    if params
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Path && has_pattern(p))
    {
        codes.push(400);
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Whether a parameter's schema restricts its form (a malformed value is then a 400).
fn has_pattern(p: &utoipa::openapi::path::Parameter) -> bool {
    matches!(&p.schema, Some(RefOr::T(Schema::Object(o))) if o.pattern.is_some())
}

fn auth_of(op: &Operation) -> Auth {
    let schemes: Vec<String> = op
        .security
        .iter()
        .flatten()
        .filter_map(|s| serde_json::to_value(s).ok())
        .filter_map(|v| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()))
        .flatten()
        .collect();
    if schemes.iter().any(|s| s == "bearer") {
        Auth::Bearer
    } else if schemes.iter().any(|s| s == "mtls") {
        Auth::AgentCertificate
    } else {
        Auth::Anonymous
    }
}

/// What each common answer means.
fn describe(code: u16) -> &'static str {
    match code {
        400 => "invalid request (code invalid_request, naming the field at fault)",
        401 => "no credentials, or invalid ones (code unauthorized)",
        403 => "the caller may not do this (code forbidden)",
        404 => "no such object, or not the caller's (code not_found)",
        413 => "the request body is too large (code too_large)",
        415 => "the request body is not application/json (code unsupported_media_type)",
        429 => "too many requests from this caller: retry after `Retry-After` seconds (code rate_limited)",
        _ => "internal error (code internal; details in the server log)",
    }
}

fn error_answer(code: u16) -> utoipa::openapi::Response {
    let mut answer = ResponseBuilder::new().description(describe(code)).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
            .build(),
    );
    if code == 429 {
        answer = answer.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("seconds to wait before the next request"))
                .build(),
        );
    }
    answer.build()
}

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                for code in common_answers(op) {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| RefOr::T(error_answer(code)));
                }
            }
        }
    }
}

/// The rules between fields that the server checks and a derive cannot say: a function's
/// `http_path` only with its `http_port` (`FunctionSpec::validate`).
pub(crate) struct CrossFieldRules;

impl utoipa::Modify for CrossFieldRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(o))) =
            components.schemas.get_mut("DeployFunctionRequest")
        {
            o.extensions.get_or_insert_with(Default::default).insert(
                "dependentRequired".to_owned(),
                serde_json::json!({ "http_path": ["http_port"] }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;

    /// Read from the served document itself (not from the rules above): every operation
    /// documents the answers that its shape makes possible, each an `ErrorBody`.
    #[test]
    fn every_operation_documents_the_common_error_answers() {
        let doc: Value = serde_json::from_str(&super::super::openapi_json()).unwrap();
        let mut checked = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let security = op["security"].to_string();
                let mut want = vec!["500"];
                if security.contains("\"bearer\"") {
                    want.extend(["401", "403", "429"]);
                } else if security.contains("\"mtls\"") {
                    want.extend(["401", "403"]);
                } else {
                    want.push("429");
                }
                if op["requestBody"]["content"]
                    .get("application/json")
                    .is_some()
                {
                    want.extend(["400", "413", "415"]);
                } else if !op["requestBody"].is_null() {
                    want.push("413");
                }
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                if params.iter().any(|p| p["in"] == "query") {
                    want.push("400");
                }
                if params.iter().any(|p| p["in"] == "path") {
                    want.push("404");
                }
                if params
                    .iter()
                    .any(|p| p["in"] == "path" && !p["schema"]["pattern"].is_null())
                {
                    want.push("400");
                }
                for code in want {
                    let answer = &op["responses"][code];
                    assert!(
                        answer["content"]["application/json"]["schema"]["$ref"]
                            == "#/components/schemas/ErrorBody",
                        "{method} {path} does not document {code} with an ErrorBody: {answer}"
                    );
                    if code == "429" {
                        assert!(
                            !answer["headers"]["Retry-After"].is_null(),
                            "{method} {path}: 429 without Retry-After"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 60, "only {checked} operations");
    }

    /// Query parameters are declared in the query, and only path parameters are in the path
    /// (a path parameter's name appears in the path's template).
    #[test]
    fn parameters_are_where_the_server_reads_them() {
        let doc: Value = serde_json::from_str(&super::super::openapi_json()).unwrap();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for p in op["parameters"].as_array().cloned().unwrap_or_default() {
                    let name = p["name"].as_str().unwrap();
                    let templated = path.contains(&format!("{{{name}}}"));
                    assert_eq!(
                        p["in"] == "path",
                        templated,
                        "{method} {path}: parameter {name} is declared in {}",
                        p["in"]
                    );
                }
            }
        }
    }
}
