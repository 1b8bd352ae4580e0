//! Seconds per image of the FID Inception network's features here (`dit::quality::inception`),
//! for scripts/bench_fid: N random 256² images in batches of B, best of R rounds, after one
//! warm-up batch; then the seconds of one Fréchet distance between two sets of N uniform
//! random 2048-feature vectors. Prints one JSON line.
//!
//!   bench_inception WEIGHTS [N] [B] [R]     (BENCH_THREADS sets libtorch's threads)

use dit::quality::inception::Inception;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let weights = args.get(1).expect("usage: bench_inception WEIGHTS [N] [B] [R]");
    let arg = |i: usize, default: i64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let (n, batch, rounds) = (arg(2, 100), arg(3, 50), arg(4, 3));
    if let Some(threads) = std::env::var("BENCH_THREADS").ok().and_then(|t| t.parse().ok()) {
        tch::set_num_threads(threads);
    }
    let net = Inception::load(std::path::Path::new(weights), Device::Cpu)?;
    tch::manual_seed(0);
    let images = Tensor::randint(256, [n, 3, 256, 256], (Kind::Uint8, Device::Cpu));
    let run = |count: i64| {
        for start in (0..count).step_by(batch as usize) {
            let x = images.narrow(0, start, batch.min(count - start)).to_kind(Kind::Float) / 255.0;
            let _ = net.features(&x);
        }
    };
    run(batch.min(n));
    let best = (0..rounds)
        .map(|_| {
            let t = std::time::Instant::now();
            run(n);
            t.elapsed().as_secs_f64() / n as f64
        })
        .fold(f64::INFINITY, f64::min);
    let stats = |f: &Tensor| dit::quality::fid::Statistics::of(f).expect("N ≥ 2");
    let (a, b) = (
        Tensor::rand([n, 2048], (Kind::Double, Device::Cpu)),
        Tensor::rand([n, 2048], (Kind::Double, Device::Cpu)),
    );
    let t = std::time::Instant::now();
    let fid = dit::quality::fid::frechet_distance(&stats(&a), &stats(&b))?;
    let fid_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"side\": \"rust\", \"s_per_image\": {best}, \"images\": {n}, \"batch\": {batch}, \"threads\": {}, \"fid_s\": {fid_s}, \"fid\": {fid}}}",
        tch::get_num_threads()
    );
    Ok(())
}
