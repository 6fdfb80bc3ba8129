//! Replays the fuzz seed corpus and every regression found by fuzzing
//! (`fuzz/corpus/labels`, `fuzz/regressions/labels`) on stable.

use std::path::Path;

#[test]
fn labels_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("labels")) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                hologram_snapshotter::plan::fuzz_labels(&data);
                n += 1;
            }
        }
    }
    assert!(n >= 4, "{n} inputs");
}
