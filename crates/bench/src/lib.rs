//! Shared by the benchmarks: inputs built the same way for every
//! measurement.

#![forbid(unsafe_code)]

/// A TOC like a real layer's: files of one chunk in 100 directories.
pub fn toc_json(n: usize) -> Vec<u8> {
    let d = format!("sha256:{}", "0".repeat(64));
    let mut out = String::from("{\"version\":1,\"entries\":[");
    for i in 0..100 {
        out.push_str(&format!(
            "{{\"name\":\"usr/share/d{i}/\",\"type\":\"dir\",\"mode\":493}},"
        ));
    }
    for i in 0..n {
        out.push_str(&format!(
            "{{\"name\":\"usr/share/d{}/file-{i}.txt\",\"type\":\"reg\",\"size\":100,\"modtime\":\"2024-01-01T00:00:00Z\",\"mode\":420,\"offset\":{},\"digest\":\"{d}\",\"chunkDigest\":\"{d}\"}},",
            i % 100,
            1000 + i * 64
        ));
    }
    out.pop();
    out.push_str("]}");
    out.into_bytes()
}
