//! Replays the fuzz seed corpus and every regression found by fuzzing
//! (`fuzz/corpus/ctp96_frames`, `fuzz/regressions/ctp96_frames`) on stable.

use std::path::Path;

#[test]
fn ctp96_frames_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("ctp96_frames")) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                hologram_ctp96::fuzz_frames(&data);
                n += 1;
            }
        }
    }
    assert!(n >= 6, "{n} inputs");
}
