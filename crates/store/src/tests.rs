//! Unit tests of the metadata store: containerd's storage rules, one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use crate::filter::Filter;
use crate::{Kind, MetaStore, StoreError, Usage};

fn store() -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = MetaStore::open(&dir.path().join("metadata.redb")).unwrap();
    (dir, s)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create(
    s: &MetaStore,
    kind: Kind,
    key: &str,
    parent: &str,
) -> Result<crate::Snapshot, StoreError> {
    s.write(|t| t.create(kind, key, parent, BTreeMap::new()))
}

fn commit(s: &MetaStore, key: &str, name: &str) -> Result<u64, StoreError> {
    s.write(|t| t.commit(key, name, Usage::default(), BTreeMap::new()))
}

/// base <- mid <- top, all committed; returns their ids.
fn chain(s: &MetaStore) -> [u64; 3] {
    let a = create(s, Kind::Active, "a-key", "").unwrap().id;
    commit(s, "a-key", "base").unwrap();
    let b = create(s, Kind::Active, "b-key", "base").unwrap().id;
    commit(s, "b-key", "mid").unwrap();
    let c = create(s, Kind::Active, "c-key", "mid").unwrap().id;
    commit(s, "c-key", "top").unwrap();
    [a, b, c]
}

#[test]
fn parent_chain_is_nearest_first() {
    let (_d, s) = store();
    let [a, b, c] = chain(&s);
    let snap = create(&s, Kind::Active, "ctr", "top").unwrap();
    assert_eq!(snap.parent_ids, vec![c, b, a]);
    assert_eq!(s.snapshot("ctr").unwrap().parent_ids, vec![c, b, a]);
    let view = create(&s, Kind::View, "v", "mid").unwrap();
    assert_eq!(view.kind, Kind::View);
    assert_eq!(view.parent_ids, vec![b, a]);
}

#[test]
fn commit_keeps_id_replaces_labels_and_renames() {
    let (_d, s) = store();
    let id = s
        .write(|t| t.create(Kind::Active, "k", "", labels(&[("old", "1")])))
        .unwrap()
        .id;
    let usage = Usage {
        size: 4096,
        inodes: 3,
    };
    let cid = s
        .write(|t| t.commit("k", "name", usage, labels(&[("new", "2"), ("empty", "")])))
        .unwrap();
    assert_eq!(id, cid);
    assert!(matches!(s.info("k"), Err(StoreError::NotFound(_))));
    let (iid, info, u) = s.info("name").unwrap();
    assert_eq!(iid, id);
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(
        info.labels,
        labels(&[("new", "2")]),
        "labels replaced, empty values dropped"
    );
    assert_eq!(u, usage);
}

#[test]
fn commit_errors_match_containerd() {
    let (_d, s) = store();
    chain(&s);
    create(&s, Kind::View, "view", "top").unwrap();
    create(&s, Kind::Active, "act", "top").unwrap();
    assert!(
        matches!(
            commit(&s, "view", "x"),
            Err(StoreError::FailedPrecondition(_))
        ),
        "commit of a view"
    );
    assert!(
        matches!(
            commit(&s, "top", "y"),
            Err(StoreError::FailedPrecondition(_))
        ),
        "commit of committed"
    );
    assert!(matches!(
        commit(&s, "missing", "z"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        commit(&s, "act", "base"),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        commit(&s, "act", ""),
        Err(StoreError::InvalidArgument(_))
    ));
    // the failed attempts changed nothing
    assert_eq!(s.info("act").unwrap().1.kind, Kind::Active);
    assert!(matches!(s.info("x"), Err(StoreError::NotFound(_))));
}

#[test]
fn create_errors_match_containerd() {
    let (_d, s) = store();
    chain(&s);
    create(&s, Kind::Active, "act", "top").unwrap();
    assert!(matches!(
        create(&s, Kind::Active, "act", "top"),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        create(&s, Kind::Active, "base", ""),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        create(&s, Kind::Active, "n", "nope"),
        Err(StoreError::NotFound(_))
    ));
    assert!(
        matches!(
            create(&s, Kind::Active, "n", "act"),
            Err(StoreError::InvalidArgument(_))
        ),
        "parent not committed"
    );
    assert!(matches!(
        create(&s, Kind::Committed, "n", ""),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        create(&s, Kind::Active, "", ""),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        create(&s, Kind::Active, "a\0b", ""),
        Err(StoreError::InvalidArgument(_))
    ));
    let long = "k".repeat(crate::MAX_KEY_LEN + 1);
    assert!(matches!(
        create(&s, Kind::Active, &long, ""),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(s.info("n"), Err(StoreError::NotFound(_))));
}

#[test]
fn huge_labels_are_refused_and_leave_no_trace() {
    let (_d, s) = store();
    let big = labels(&[("k", &"v".repeat(crate::MAX_LABEL_SIZE))]);
    let r = s.write(|t| t.create(Kind::Active, "x", "", big));
    assert!(
        matches!(r, Err(StoreError::InvalidArgument(ref m)) if m.contains("4096")),
        "{r:?}"
    );
    let many: BTreeMap<String, String> = (0..100_000)
        .map(|i| (format!("label-{i}"), "value".to_string()))
        .collect();
    let r = s.write(|t| t.create(Kind::Active, "x", "", many));
    assert!(matches!(r, Err(StoreError::InvalidArgument(_))), "{r:?}");
    assert!(matches!(s.info("x"), Err(StoreError::NotFound(_))));
    // exactly at the limit is fine
    let edge = labels(&[("k", &"v".repeat(crate::MAX_LABEL_SIZE - 1))]);
    s.write(|t| t.create(Kind::Active, "x", "", edge)).unwrap();
}

#[test]
fn remove_rules() {
    let (_d, s) = store();
    let [_, _, c] = chain(&s);
    create(&s, Kind::Active, "ctr", "top").unwrap();
    let e = s.write(|t| t.remove("top")).unwrap_err();
    assert!(
        matches!(e, StoreError::FailedPrecondition(ref m) if m.contains("children")),
        "{e:?}"
    );
    assert!(matches!(
        s.write(|t| t.remove("nope")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.write(|t| t.remove("ctr")).unwrap().1, Kind::Active);
    assert_eq!(s.write(|t| t.remove("top")).unwrap(), (c, Kind::Committed));
    s.write(|t| t.remove("mid")).unwrap();
    s.write(|t| t.remove("base")).unwrap();
    assert!(s.ids().unwrap().is_empty());
}

#[test]
fn child_link_follows_commit() {
    // After "b-key" (child of base) is committed as "mid", base still has a
    // child; once "mid" is gone, base can go.
    let (_d, s) = store();
    chain(&s);
    assert!(s.write(|t| t.remove("base")).is_err());
    s.write(|t| t.remove("top")).unwrap();
    assert!(s.write(|t| t.remove("base")).is_err());
    s.write(|t| t.remove("mid")).unwrap();
    s.write(|t| t.remove("base")).unwrap();
}

#[test]
fn children_of_similar_names_do_not_alias() {
    // A child of "ab" must not count as a child of "a" (range scans by prefix).
    let (_d, s) = store();
    create(&s, Kind::Active, "k1", "").unwrap();
    commit(&s, "k1", "a").unwrap();
    create(&s, Kind::Active, "k2", "").unwrap();
    commit(&s, "k2", "ab").unwrap();
    create(&s, Kind::Active, "child", "ab").unwrap();
    s.write(|t| t.remove("a")).unwrap();
}

#[test]
fn ids_are_never_reused() {
    let (d, s) = store();
    let a = create(&s, Kind::Active, "a", "").unwrap().id;
    s.write(|t| t.remove("a")).unwrap();
    let b = create(&s, Kind::Active, "b", "").unwrap().id;
    assert!(b > a);
    // a failed transaction does not consume or reuse ids incorrectly
    let _ = create(&s, Kind::Active, "b", "");
    drop(s);
    // reopen: the counter persisted; a floor from disk pushes it further
    let s = MetaStore::open_with_floor(&d.path().join("metadata.redb"), 41).unwrap();
    let c = create(&s, Kind::Active, "c", "").unwrap().id;
    assert_eq!(c, 42);
    let s2_next = create(&s, Kind::Active, "d", "").unwrap().id;
    assert_eq!(s2_next, 43);
}

#[test]
fn failed_closure_rolls_back() {
    let (_d, s) = store();
    let r: Result<(), StoreError> = s.write(|t| {
        t.create(Kind::Active, "x", "", BTreeMap::new())?;
        Err(StoreError::Internal("the filesystem step failed".into()))
    });
    assert!(r.is_err());
    assert!(matches!(s.info("x"), Err(StoreError::NotFound(_))));
}

#[test]
fn update_field_paths() {
    let (_d, s) = store();
    s.write(|t| t.create(Kind::Active, "k", "", labels(&[("a", "1"), ("b", "2")])))
        .unwrap();
    let (_, mut info, _) = s.info("k").unwrap();
    let before = info.updated_ns;

    // labels.<key>: set one, leave the others
    info.labels = labels(&[("a", "10"), ("c", "3")]);
    let got = s.write(|t| t.update(&info, &["labels.a".into()])).unwrap();
    assert_eq!(got.labels, labels(&[("a", "10"), ("b", "2")]));
    assert!(got.updated_ns >= before);

    // labels.<key> absent from info deletes it; keys with dots work
    info.labels = labels(&[("containerd.io/x.y", "v")]);
    let got = s
        .write(|t| {
            t.update(
                &info,
                &["labels.b".into(), "labels.containerd.io/x.y".into()],
            )
        })
        .unwrap();
    assert_eq!(
        got.labels,
        labels(&[("a", "10"), ("containerd.io/x.y", "v")])
    );

    // "labels" replaces all; empty values vanish
    info.labels = labels(&[("z", "26"), ("gone", "")]);
    let got = s.write(|t| t.update(&info, &["labels".into()])).unwrap();
    assert_eq!(got.labels, labels(&[("z", "26")]));

    // no paths: all mutable fields (the labels)
    info.labels = labels(&[("only", "1")]);
    let got = s.write(|t| t.update(&info, &[])).unwrap();
    assert_eq!(got.labels, labels(&[("only", "1")]));

    // immutable or unknown fields are refused, nothing changes
    for bad in ["name", "parent", "kind", "created_at", "labelsX"] {
        let r = s.write(|t| t.update(&info, &[bad.to_string()]));
        assert!(
            matches!(r, Err(StoreError::InvalidArgument(_))),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(s.info("k").unwrap().1.labels, labels(&[("only", "1")]));
    assert_eq!(s.info("k").unwrap().1.kind, Kind::Active);

    info.name = "missing".into();
    assert!(matches!(
        s.write(|t| t.update(&info, &[])),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn update_respects_label_limits() {
    let (_d, s) = store();
    create(&s, Kind::Active, "k", "").unwrap();
    let (_, mut info, _) = s.info("k").unwrap();
    info.labels = labels(&[("k", &"v".repeat(5000))]);
    assert!(matches!(
        s.write(|t| t.update(&info, &[])),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[test]
fn walk_with_the_remote_snapshot_filter() {
    // containerd's metadata layer looks a remote snapshot up with exactly this filter.
    let (_d, s) = store();
    chain(&s);
    let ref_label = "containerd.io/snapshot.ref";
    s.write(|t| {
        t.create(
            Kind::Active,
            "k",
            "top",
            labels(&[(ref_label, "sha256:abc")]),
        )
    })
    .unwrap();
    s.write(|t| {
        t.commit(
            "k",
            "sha256:abc",
            Usage::default(),
            labels(&[(ref_label, "sha256:abc")]),
        )
    })
    .unwrap();
    let f =
        Filter::parse_all(&[format!(r#"labels."{ref_label}"==sha256:abc,parent=="top""#)]).unwrap();
    let hits = s.walk(&f).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].name, "sha256:abc");
    let f =
        Filter::parse_all(&[format!(r#"labels."{ref_label}"==sha256:abc,parent=="mid""#)]).unwrap();
    assert!(s.walk(&f).unwrap().is_empty(), "parent must be honoured");

    let all = s.walk(&Filter::parse_all::<&str>(&[]).unwrap()).unwrap();
    assert_eq!(all.len(), 4);
    let f = Filter::parse_all(&["kind==committed,parent==\"\"", "name==mid"]).unwrap();
    let names: Vec<_> = s.walk(&f).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["base", "mid"]);
}

#[test]
fn concurrent_prepare_of_one_key_has_one_winner() {
    let (_d, s) = store();
    let s = Arc::new(s);
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let s = Arc::clone(&s);
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                create(&s, Kind::Active, "same", "")
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exists = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::AlreadyExists(_))))
        .count();
    assert_eq!((ok, exists), (1, n - 1));
}

#[test]
fn mounts_only_for_active_and_view() {
    let (_d, s) = store();
    chain(&s);
    assert!(matches!(
        s.snapshot("top"),
        Err(StoreError::FailedPrecondition(_))
    ));
    assert!(matches!(s.snapshot("nope"), Err(StoreError::NotFound(_))));
}

#[test]
fn store_survives_reopen() {
    let (d, s) = store();
    chain(&s);
    drop(s);
    let s = MetaStore::open(&d.path().join("metadata.redb")).unwrap();
    assert_eq!(s.info("top").unwrap().1.parent, "mid");
    assert_eq!(s.ids().unwrap().len(), 3);
}

#[test]
fn second_open_of_the_same_file_is_refused() {
    let (d, _s) = store();
    let r = MetaStore::open(&d.path().join("metadata.redb"));
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
}
