//! Replays the fuzz seed corpus and every regression found by fuzzing
//! (`fuzz/corpus/`, `fuzz/regressions/`) on stable.

use std::path::Path;

fn each(target: &str, f: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                f(&data);
                n += 1;
            }
        }
    }
    n
}

#[test]
fn toc_region_corpus() {
    assert!(each("toc_region", hologram_estargz::fuzzing::toc_region) >= 4);
}

#[test]
fn index_json_corpus() {
    assert!(each("index_json", hologram_estargz::fuzzing::index_json) >= 6);
}
