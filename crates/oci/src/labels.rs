//! Label and annotation keys: containerd's remote-snapshot handshake, the
//! eStargz annotations, and the labels this daemon writes. One set, used by
//! the daemon and by `hologram pull`.
//!
//! Every value under these keys that arrives in a Prepare is attacker input:
//! containerd copies an image's `containerd.io/snapshot/*` layer annotations
//! into the labels. The daemon parses the ones it reads once, into typed
//! values (`hologram-snapshotter`'s `plan` module), and drops the ones it
//! writes itself ([`is_reserved`]).

/// containerd's unpacker: the layer's chain ID (set by containerd itself,
/// overriding any annotation).
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Prefix of the labels containerd forwards from layer annotations.
pub const INHERITED_PREFIX: &str = "containerd.io/snapshot/";

/// CRI-style layer labels (containerd's `snapshotters.AppendInfoHandlerWrapper`,
/// `hologram pull`): the image reference the client resolved.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's digest.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The manifest's digest.
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// This and the following layers' digests, comma-separated.
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// stargz-snapshotter's labels (`ctr-remote image rpull`).
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";

/// Layer annotation with the digest of the eStargz TOC JSON.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation with the uncompressed size of an eStargz blob.
pub const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// On a committed remote snapshot (the value stargz uses too).
pub const REMOTE: &str = "containerd.io/snapshot/remote";
pub const REMOTE_VALUE: &str = "remote snapshot";
/// What this daemon records on its remote snapshots: where the bytes come
/// from and what they must be.
pub const HOLOGRAM_PREFIX: &str = "containerd.io/snapshot/hologram.";
pub const HOLOGRAM_SOURCE: &str = "containerd.io/snapshot/hologram.source";
pub const HOLOGRAM_BLOB_SIZE: &str = "containerd.io/snapshot/hologram.blob-size";
pub const HOLOGRAM_LAYER: &str = "containerd.io/snapshot/hologram.layer-digest";
pub const HOLOGRAM_TOC: &str = "containerd.io/snapshot/hologram.toc-digest";
pub const HOLOGRAM_DIFF_ID: &str = "containerd.io/snapshot/hologram.diff-id";
pub const HOLOGRAM_IMAGE: &str = "containerd.io/snapshot/hologram.image";
pub const HOLOGRAM_MANIFEST: &str = "containerd.io/snapshot/hologram.manifest-digest";
/// `pending`, `verified` or `bad`: the whole-blob check (digest and diff ID).
pub const HOLOGRAM_VERIFIED: &str = "containerd.io/snapshot/hologram.verified";

/// containerd's GC root label.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// Keys only the daemon may write: dropped from what a Prepare brings.
pub fn is_reserved(key: &str) -> bool {
    key == REMOTE || key.starts_with(HOLOGRAM_PREFIX)
}
