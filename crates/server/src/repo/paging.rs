//! One page of a list kept in key order (VMs by name, functions): `limit` entries from the
//! key after `after`, and the cursor of the next page. The keys come in store order, so pages
//! neither repeat nor skip what stays in place between them.

use firefleet_store::KeyValue;

/// One page asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items wanted.
    pub limit: usize,
    /// The key (past the list's prefix) the page starts after.
    pub after: Option<String>,
}

impl Page {
    /// The page's entries of `kvs` (sorted by key, all under `prefix`) and the next cursor,
    /// absent when nothing follows.
    pub fn select<'a>(
        &self,
        kvs: &'a [KeyValue],
        prefix: &str,
    ) -> (Vec<&'a KeyValue>, Option<String>) {
        let mut rest = kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix).map(|k| (k, kv)))
            .filter(|(k, _)| self.after.as_deref().is_none_or(|a| *k > a));
        let page: Vec<(&str, &KeyValue)> = rest.by_ref().take(self.limit).collect();
        let next = match (rest.next(), page.last()) {
            (Some(_), Some((k, _))) => Some((*k).to_owned()),
            _ => None,
        };
        (page.into_iter().map(|(_, kv)| kv).collect(), next)
    }
}
