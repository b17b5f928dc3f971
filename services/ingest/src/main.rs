//! `push0-ingest`: validates and de-duplicates block submissions.

use clap::Parser;

/// push0 ingest: validates block submissions and publishes accepted blocks
#[derive(Parser, Debug)]
#[command(name = "push0-ingest", version)]
struct Args {
    #[command(flatten)]
    common: push0_runtime::CommonArgs,

    /// Largest accepted block payload, bytes
    #[arg(long, env = "PUSH0_MAX_PAYLOAD", default_value_t = 4 * 1024 * 1024)]
    max_payload: usize,

    /// Payloads above this many bytes go to the object store
    #[arg(long, env = "PUSH0_INLINE_THRESHOLD", default_value_t = push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD)]
    inline_threshold: usize,
}

fn main() {
    let args = Args::parse();
    let config = push0_ingest::Config {
        max_payload: args.max_payload,
        inline_threshold: args.inline_threshold,
    };
    push0_runtime::service::main(push0_ingest::SERVICE, &args.common, |bus, shutdown| {
        push0_ingest::run(bus, config, shutdown)
    });
}
