//! Hash throughput per algorithm, with RustCrypto's md-5 beside ours to show
//! why otaflash schedules MD5 itself. Run: `cargo bench -p otaflash-core`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use otaflash_core::hash::{HashAlgorithm, Hasher};
use std::hint::black_box;

const SIZE: usize = 16 << 20;

fn throughput(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 + (i >> 7)) as u8).collect();
    let mut group = c.benchmark_group("hash-16MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    for alg in HashAlgorithm::ALL {
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                let mut h = Hasher::new(alg);
                h.update(black_box(&data));
                h.finalize()
            })
        });
    }
    group.bench_function("md5 (RustCrypto md-5)", |b| {
        b.iter(|| <md5::Md5 as md5::Digest>::digest(black_box(&data)))
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
