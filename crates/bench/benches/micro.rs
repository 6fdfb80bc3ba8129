//! Criterion micro-benchmarks of the pieces every lazy read goes through:
//! building a layer's index from its TOC JSON, verifying a fetched chunk,
//! and looking a chunk up in (and reading it from) the chunk cache.
//! `cargo bench -p hologram-bench --bench micro`; the FUSE read path
//! through the kernel is measured by `scripts/bench-read.sh` (it needs a
//! mount, containerd and a registry).

use std::io::Write as _;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hologram_bench::toc_json;
use hologram_estargz::{decompress_chunk, Chunk, Index, IndexLimits, FOOTER_SIZE};
use hologram_fs::cache::ChunkCache;
use hologram_oci::Digest;

fn toc_parse(c: &mut Criterion) {
    let n = 10_000;
    let json = toc_json(n);
    let blob = 1u64 << 40;
    let mut g = c.benchmark_group("toc");
    g.throughput(Throughput::Elements((n + 100) as u64));
    g.bench_function("index_from_json_10k_entries", |b| {
        b.iter(|| {
            Index::from_json(
                &json,
                blob,
                blob - FOOTER_SIZE,
                IndexLimits {
                    max_entries: n + 1000,
                },
            )
            .map(|i| i.len())
        })
    });
    g.finish();
}

/// Pseudo-random but compressible bytes, like a binary.
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4 == 0 {
                x as u8
            } else {
                (i / 64) as u8
            }
        })
        .collect()
}

fn chunk_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    for size in [4usize << 10, 64 << 10, 1 << 20] {
        let data = payload(size);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if gz.write_all(&data).is_err() {
            return;
        }
        let Ok(member) = gz.finish() else { return };
        let chunk = Chunk {
            file_offset: 0,
            size: size as u64,
            blob_offset: 0,
            blob_len: member.len() as u64,
            inner_offset: 0,
            digest: Digest::of(&data),
        };
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("decompress_and_verify_{}k", size >> 10), |b| {
            b.iter(|| decompress_chunk(&chunk, &member).map(|v| v.len()))
        });
    }
    g.finish();
}

fn cache(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(cache) = ChunkCache::open(dir.path(), 1 << 30) else {
        return;
    };
    let chunks: Vec<(Digest, Vec<u8>)> = (0..1000u32)
        .map(|i| {
            let mut d = payload(64 << 10);
            d[..4].copy_from_slice(&i.to_le_bytes());
            (Digest::of(&d), d)
        })
        .collect();
    for (digest, data) in &chunks {
        if cache.put(digest, data).is_err() {
            return;
        }
    }
    let absent = Digest::of(b"not cached");
    let mut g = c.benchmark_group("cache");
    let mut i = 0usize;
    g.bench_function("contains_hit", |b| {
        b.iter(|| {
            i = (i + 1) % chunks.len();
            cache.contains(&chunks[i].0)
        })
    });
    g.bench_function("contains_miss", |b| b.iter(|| cache.contains(&absent)));
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("read_into_4k", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(4096),
            |out| {
                i = (i + 7) % chunks.len();
                cache.read_into(&chunks[i].0, 8192, 4096, out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, toc_parse, chunk_verify, cache);
criterion_main!(benches);
