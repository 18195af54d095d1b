use proptest::prelude::*;

use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn chain(n: usize) -> Vec<Entry> {
    let k = key(1);
    let mut c = Chain::new();
    (0..n)
        .map(|i| {
            c.append(
                &k,
                Event::new(
                    1000 + i as u64,
                    "tenant:acme",
                    "POST /v1/vms",
                    "vm/x",
                    "201",
                )
                .with("i", i.to_string()),
            )
        })
        .collect()
}

fn pubkey() -> VerifyingKey {
    key(1).verifying_key()
}

fn first_bad(entries: &[Entry]) -> Tampered {
    match verify(entries, &pubkey()) {
        Ok(v) => panic!("tampering not detected: {v:?}"),
        Err(t) => t,
    }
}

#[test]
fn a_valid_chain_verifies() {
    let entries = chain(5);
    let v = verify(&entries, &pubkey()).expect("valid");
    assert_eq!(v.entries, 5);
    assert_eq!(v.head.seq, 5);
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    assert_eq!(entries[0].event.seq, 1);
    assert_eq!(entries[3].prev_hash, entries[2].hash);
    assert!(verify(&[], &pubkey()).is_ok());
    verify_with_head(&entries, &pubkey(), &v.head).expect("valid with head");
}

#[test]
fn canonical_bytes_are_deterministic_and_sorted() {
    let e = Event::new(1, "a", "b", "c", "d")
        .with("z", "1")
        .with("a", "2");
    let bytes = String::from_utf8(canonical_bytes(&e, GENESIS_HASH)).expect("utf8");
    assert_eq!(
        bytes,
        format!(
            r#"{{"domain":"firefleet-audit-v1","event":{{"seq":0,"at_ms":1,"actor":"a","action":"b","target":"c","outcome":"d","detail":{{"a":"2","z":"1"}}}},"prev_hash":"{GENESIS_HASH}"}}"#
        )
    );
}

#[test]
fn an_edited_entry_is_named() {
    let mut entries = chain(5);
    entries[2].event.detail.insert("i".into(), "99".into());
    let t = first_bad(&entries);
    assert_eq!((t.index, t.seq), (2, 3));
    assert!(matches!(t.reason, Reason::HashMismatch { .. }), "{t}");
}

#[test]
fn an_edit_with_a_recomputed_hash_fails_the_signature() {
    let mut entries = chain(5);
    entries[1].event.actor = "tenant:mallory".into();
    entries[1].hash = entry_hash(&entries[1].event, &entries[1].prev_hash);
    let t = first_bad(&entries);
    assert_eq!(t.seq, 2);
    assert!(matches!(t.reason, Reason::BadSignature { .. }), "{t}");
}

#[test]
fn a_deleted_entry_is_named() {
    let mut entries = chain(5);
    entries.remove(2);
    let t = first_bad(&entries);
    assert_eq!(t.seq, 3);
    assert_eq!(
        t.reason,
        Reason::Deleted {
            expected_seq: 3,
            found_seq: 4
        }
    );
    // The first one too.
    let mut entries = chain(3);
    entries.remove(0);
    assert_eq!(first_bad(&entries).seq, 1);
}

#[test]
fn a_deleted_last_entry_is_seen_against_the_head() {
    let mut entries = chain(4);
    let head = Chain::after(&entries[3]).head().clone();
    entries.pop();
    let t = verify_with_head(&entries, &pubkey(), &head).expect_err("truncated");
    assert_eq!((t.index, t.seq), (3, 4));
    assert!(matches!(t.reason, Reason::Truncated { .. }), "{t}");
}

#[test]
fn swapped_entries_are_named() {
    let mut entries = chain(5);
    entries.swap(1, 2);
    let t = first_bad(&entries);
    assert_eq!(t.seq, 2);
    assert_eq!(
        t.reason,
        Reason::Reordered {
            expected_seq: 2,
            found_seq: 3
        }
    );
}

#[test]
fn a_resigned_entry_is_named() {
    let mut entries = chain(5);
    let other = key(2);
    let e = entries[3].clone();
    entries[3] = sign_entry(&other, e.event, &e.prev_hash);
    let t = first_bad(&entries);
    assert_eq!(t.seq, 4);
    assert!(matches!(t.reason, Reason::BadSignature { .. }), "{t}");
    // Keeping the old key id changes nothing.
    entries[3].key_id = e.key_id;
    assert!(matches!(
        first_bad(&entries).reason,
        Reason::BadSignature { .. }
    ));
}

#[test]
fn keys_round_trip_through_hex() {
    let k = key(7);
    let back = signing_key_from_hex(&signing_key_to_hex(&k)).expect("hex");
    assert_eq!(back.to_bytes(), k.to_bytes());
    let p = verifying_key_from_hex(&format!("{}\n", verifying_key_to_hex(&k.verifying_key())))
        .expect("hex");
    assert_eq!(p, k.verifying_key());
    assert_eq!(verifying_key_from_hex("zz"), Err(KeyError::Format));
}

#[test]
fn entries_round_trip_through_json() {
    let entries = chain(2);
    let text = serde_json::to_string(&entries[1]).expect("json");
    let back: Entry = serde_json::from_str(&text).expect("json");
    assert_eq!(back, entries[1]);
}

#[derive(Debug, Clone)]
enum Tamper {
    Edit(usize),
    Delete(usize),
    Swap(usize, usize),
    /// Insert a copy of entry `.1` before position `.0`.
    Insert(usize, usize),
    Resign(usize),
}

fn tamper() -> impl Strategy<Value = (usize, Tamper)> {
    (2usize..16).prop_flat_map(|n| {
        let t = prop_oneof![
            (0..n).prop_map(Tamper::Edit),
            (0..n).prop_map(Tamper::Delete),
            (0..n, 0..n)
                .prop_filter("two", |(a, b)| a != b)
                .prop_map(|(a, b)| Tamper::Swap(a.min(b), a.max(b))),
            (0..=n, 0..n).prop_map(|(at, of)| Tamper::Insert(at, of)),
            (0..n).prop_map(Tamper::Resign),
        ];
        (Just(n), t)
    })
}

proptest! {
    #[test]
    fn any_single_tampering_is_named_at_the_right_entry((n, t) in tamper()) {
        let original = chain(n);
        let head = Chain::after(&original[n - 1]).head().clone();
        let mut entries = original.clone();
        let (index, is_right): (usize, fn(&Reason) -> bool) = match t {
            Tamper::Edit(i) => {
                entries[i].event.target = "vm/other".into();
                (i, |r| matches!(r, Reason::HashMismatch { .. }))
            }
            Tamper::Delete(i) => {
                entries.remove(i);
                if i == n - 1 {
                    (i, |r| matches!(r, Reason::Truncated { .. }))
                } else {
                    (i, |r| matches!(r, Reason::Deleted { .. }))
                }
            }
            Tamper::Swap(i, j) => {
                entries.swap(i, j);
                (i, |r| matches!(r, Reason::Reordered { .. }))
            }
            Tamper::Insert(at, of) => {
                entries.insert(at, original[of].clone());
                // A copy right before its original is the original's twin: the second one
                // is the one out of place.
                let index = if of == at { at + 1 } else { at };
                (index, |r| matches!(r, Reason::Inserted { .. }))
            }
            Tamper::Resign(i) => {
                let e = entries[i].clone();
                entries[i] = sign_entry(&key(9), e.event, &e.prev_hash);
                (i, |r| matches!(r, Reason::BadSignature { .. }))
            }
        };
        let t = verify_with_head(&entries, &pubkey(), &head).expect_err("tampering detected");
        prop_assert_eq!(t.index, index, "{}", t);
        prop_assert_eq!(t.seq, index as u64 + 1);
        prop_assert!(is_right(&t.reason), "{}", t);
        prop_assert!(verify_with_head(&original, &pubkey(), &head).is_ok());
    }
}
