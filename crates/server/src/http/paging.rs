//! Paged lists over per-tenant keys (`GET /v1/vms`, `GET /v1/functions`): `limit=` items from
//! the key after `after=`, and the cursor of the next page (the selection is
//! [`crate::repo::Page`]'s; this module parses the query and says whose objects a list covers). A tenant's page lists only its own
//! prefix (`/vmnames/<tenant>/`, `/functions/<tenant>/`); an admin's without `tenant=` lists
//! across tenants, cursor `tenant/name`. The keys come in store order, so pages neither repeat
//! nor skip what stays in place between them.

use firefleet_api::{Role, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use firefleet_types::TenantId;

use crate::{auth::Caller, repo::Page, ApiError};

/// Longest cursor: a tenant, a slash and a name.
const MAX_CURSOR: usize = 2 * 63 + 1;

fn bad(field: &str, message: String) -> ApiError {
    ApiError::BadRequest {
        message,
        field: Some(field.to_owned()),
    }
}

/// The page `limit=` and `after=` ask for; a 400 naming the parameter when either is bad.
pub fn parse(limit: Option<&str>, after: Option<String>) -> Result<Page, ApiError> {
    let limit = match limit {
        None => DEFAULT_PAGE_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "limit",
                    format!("limit {s:?}: must be a whole number in 1..={MAX_PAGE_LIMIT}"),
                ))
            }
        },
    };
    // An empty cursor is no cursor: the first page.
    let after = after.filter(|a| !a.is_empty());
    if let Some(a) = &after {
        let ok = a.len() <= MAX_CURSOR
            && a.matches('/').count() <= 1
            && a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-/".contains(&b));
        if !ok {
            return Err(bad(
                "after",
                format!("after {a:?}: not a cursor this list gave (`name` or `tenant/name`)"),
            ));
        }
    }
    Ok(Page { limit, after })
}

/// Whose objects a list covers: a tenant's own (asking for another's is refused), an admin's
/// `tenant=` or everyone's (None).
pub fn scope(caller: &Caller, tenant: Option<&str>) -> Result<Option<TenantId>, ApiError> {
    let tenant = tenant.map(|t| TenantId::parse("tenant", t)).transpose()?;
    match tenant {
        Some(t) if caller.role != Role::Admin && t != caller.tenant => Err(ApiError::Forbidden(
            format!("a tenant token lists only its own tenant's objects, not {t}'s"),
        )),
        Some(t) => Ok(Some(t)),
        None if caller.role == Role::Admin => Ok(None),
        None => Ok(Some(caller.tenant.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firefleet_store::KeyValue;

    fn kvs(keys: &[&str]) -> Vec<KeyValue> {
        keys.iter()
            .map(|k| KeyValue {
                key: format!("/p/{k}"),
                value: Vec::new(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            })
            .collect()
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end_without_repeats() {
        let all = kvs(&["a", "b", "c", "d", "e"]);
        let mut page = parse(Some("2"), None).unwrap();
        let mut seen = Vec::new();
        loop {
            let (items, next) = page.select(&all, "/p/");
            seen.extend(items.iter().map(|kv| kv.key.clone()));
            match next {
                Some(n) => page.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["/p/a", "/p/b", "/p/c", "/p/d", "/p/e"]);
        // A page that ends exactly at the end has no next.
        let (items, next) = parse(Some("5"), None).unwrap().select(&all, "/p/");
        assert_eq!((items.len(), next), (5, None));
    }

    #[test]
    fn bad_limits_and_cursors_name_the_parameter() {
        for l in ["0", "1001", "-1", "ten", ""] {
            let e = parse(Some(l), None).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "limit"));
        }
        for a in ["A", "a/b/c", "../x"] {
            let e = parse(None, Some(a.to_owned())).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "after"));
        }
        // An empty cursor is the first page.
        assert_eq!(parse(None, Some(String::new())).unwrap().after, None);
    }
}
