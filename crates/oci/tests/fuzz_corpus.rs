//! Replays the fuzz seed corpus and every regression found by fuzzing
//! (`fuzz/corpus/oci_documents`, `fuzz/regressions/oci_documents`) on stable.

use std::path::Path;

#[test]
fn oci_documents_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("oci_documents")) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                hologram_oci::fuzzing::documents(&data);
                n += 1;
            }
        }
    }
    assert!(n >= 6, "{n} inputs");
}
