//! Converts DiT weights between `.pth`/`.pt` (the original's torch.save), `.ot` and
//! `.safetensors`, after checking every key and shape against the model configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Convert DiT weights between .pth/.pt, .ot and .safetensors (format by extension)"
)]
struct Args {
    /// Weight file to read.
    input: PathBuf,
    /// Weight file to write (atomically; an existing file is replaced only on success).
    output: PathBuf,
    /// Model configuration the weights must match [default: ./config.json, else the original's]
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = dit::cli::parse_args();
    dit::cli::run(|| {
        let cfg = dit::Config::resolve(args.config.as_deref())?;
        let n = dit::checkpoint::convert(&args.input, &args.output, &cfg.model)?;
        println!("wrote {} ({n} tensors)", args.output.display());
        Ok(())
    })
}
