//! Micro-benchmarks of the artifact path's hot loops: SHA-256 over the bytes (which
//! every upload, download and serve does), hashing a file as a worker does before
//! uploading, and streaming an upload into the leader's artifact store (hash, write,
//! fsync, rename) in the workers' chunk size.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

const SIZE: usize = 64 << 20;

fn data() -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn artifacts(c: &mut Criterion) {
    let bytes = data();
    let sha = hex::encode(Sha256::digest(&bytes));
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("artifact");
    std::fs::write(&file, &bytes).expect("writing the test artifact");

    let mut group = c.benchmark_group("artifacts");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("sha256 in memory, 64 MiB", |b| b.iter(|| Sha256::digest(&bytes)));
    group.bench_function("hash_file, 64 MiB", |b| {
        b.iter(|| runtime.block_on(kiln_core::digest::hash_file(&file)).expect("hashing"))
    });
    let store_dir = dir.path().join("store");
    let store = kiln_leader::artifacts::ArtifactStore::open(&store_dir, u64::MAX).expect("opening the store");
    group.bench_function("store an upload in 256 KiB chunks, 64 MiB", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let _ = std::fs::remove_file(store_dir.join(&sha));
                let mut writer = store.begin(&sha, SIZE as u64).expect("beginning");
                for chunk in bytes.chunks(kiln_proto::UPLOAD_CHUNK_BYTES) {
                    // As received from the network: each chunk its own buffer.
                    writer.write(bytes::Bytes::copy_from_slice(chunk)).await.expect("writing");
                }
                writer.finish().await.expect("finishing")
            })
        })
    });
    group.finish();
}

criterion_group!(benches, artifacts);
criterion_main!(benches);
