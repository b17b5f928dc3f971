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

    /// Chains served, comma-separated; a block of another chain is dead-lettered. Default:
    /// every chain, which lets a block source add chains (each one more set of per-chain state
    /// and metric series)
    #[arg(long, env = "PUSH0_CHAINS", value_delimiter = ',', value_parser = chain)]
    chains: Vec<String>,
}

fn chain(name: &str) -> Result<String, String> {
    push0_protocol::validate_chain(name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

fn main() {
    let args = Args::parse();
    let config = push0_ingest::Config {
        max_payload: args.max_payload,
        inline_threshold: args.inline_threshold,
        chains: args.chains,
    };
    push0_runtime::service::main(push0_ingest::SERVICE, &args.common, |bus, shutdown| {
        push0_ingest::run(bus, config, shutdown)
    });
}
