//! Times `dit::quality::swd` on this machine: `swd_timing DATA SIZE NUM` loads NUM images of
//! DATA (a folder or builtin:NAME) at SIZE×SIZE twice (two halves when it has 2·NUM) and
//! prints the loading time, the measuring time and the distances.

use std::time::Instant;

use anyhow::{Context, Result};
use dit::data::Dataset;
use dit::quality::{self, SwdOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (data, size, num) = (&args[1], args[2].parse::<i64>()?, args[3].parse::<usize>()?);
    let started = Instant::now();
    let set = Dataset::open(data, size)?;
    let images = quality::load_images(&set, 2 * num, None).context("loading")?;
    let n = images.size()[0];
    let (a, b) = if n as usize >= 2 * num {
        (images.narrow(0, 0, num as i64), images.narrow(0, num as i64, num as i64))
    } else {
        (images.shallow_clone(), images.flip([0]))
    };
    println!("loaded {n} images at {size}² in {:.2} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let report = quality::swd(&a, &b, &SwdOptions::default(), 0)?;
    println!(
        "swd of {} vs {} images: {:.2} s, {report:?}",
        a.size()[0],
        b.size()[0],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
