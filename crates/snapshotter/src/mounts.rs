//! The mounts containerd gets for a snapshot: the same rules as containerd's
//! overlayfs snapshotter, so the two are interchangeable for a container.
//!
//! * no parents: a bind mount of the snapshot's own `fs` (ro for a view);
//! * a view with one parent: a read-only bind of the parent's `fs`;
//! * otherwise overlay, `lowerdir` nearest parent first, plus `upperdir` and
//!   `workdir` for an active snapshot; `index=off` where the kernel has it.

use std::path::PathBuf;

use hologram_store::{Kind, Snapshot};

/// One mount, as containerd's `types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Builds the mounts of `s`; `fs(id)` and `work(id)` name snapshot directories.
pub fn mounts_for(
    s: &Snapshot,
    fs: impl Fn(u64) -> PathBuf,
    work: impl Fn(u64) -> PathBuf,
    index_off: bool,
) -> Vec<Mount> {
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    if s.parent_ids.is_empty() {
        let mode = if s.kind == Kind::View { "ro" } else { "rw" };
        return vec![Mount {
            kind: "bind".into(),
            source: path(fs(s.id)),
            options: vec![mode.into(), "rbind".into()],
        }];
    }
    if s.kind != Kind::Active && s.parent_ids.len() == 1 {
        return vec![Mount {
            kind: "bind".into(),
            source: path(fs(s.parent_ids[0])),
            options: vec!["ro".into(), "rbind".into()],
        }];
    }
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_owned());
    }
    if s.kind == Kind::Active {
        options.push(format!("workdir={}", path(work(s.id))));
        options.push(format!("upperdir={}", path(fs(s.id))));
    }
    let lower: Vec<String> = s.parent_ids.iter().map(|id| path(fs(*id))).collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(kind: Kind, parents: &[u64]) -> Snapshot {
        Snapshot {
            id: 9,
            kind,
            parent_ids: parents.to_vec(),
        }
    }

    fn m(s: &Snapshot, index_off: bool) -> Vec<Mount> {
        mounts_for(
            s,
            |id| PathBuf::from(format!("/r/{id}/fs")),
            |id| PathBuf::from(format!("/r/{id}/work")),
            index_off,
        )
    }

    #[test]
    fn base_active_is_rw_bind_of_itself() {
        let got = m(&snap(Kind::Active, &[]), true);
        assert_eq!(
            got,
            vec![Mount {
                kind: "bind".into(),
                source: "/r/9/fs".into(),
                options: vec!["rw".into(), "rbind".into()]
            }]
        );
    }

    #[test]
    fn base_view_is_ro_bind_of_itself() {
        let got = m(&snap(Kind::View, &[]), false);
        assert_eq!(got[0].options, vec!["ro", "rbind"]);
        assert_eq!(got[0].source, "/r/9/fs");
    }

    #[test]
    fn view_on_one_parent_binds_the_parent() {
        let got = m(&snap(Kind::View, &[3]), true);
        assert_eq!(
            got,
            vec![Mount {
                kind: "bind".into(),
                source: "/r/3/fs".into(),
                options: vec!["ro".into(), "rbind".into()]
            }]
        );
    }

    #[test]
    fn active_on_parents_is_overlay_nearest_lower_first() {
        let got = m(&snap(Kind::Active, &[3, 2, 1]), true);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "overlay");
        assert_eq!(got[0].source, "overlay");
        assert_eq!(
            got[0].options,
            vec![
                "index=off",
                "workdir=/r/9/work",
                "upperdir=/r/9/fs",
                "lowerdir=/r/3/fs:/r/2/fs:/r/1/fs"
            ]
        );
    }

    #[test]
    fn view_on_many_parents_is_readonly_overlay() {
        let got = m(&snap(Kind::View, &[3, 2]), false);
        assert_eq!(got[0].options, vec!["lowerdir=/r/3/fs:/r/2/fs"]);
    }
}
