//! `push0-aggregator`: collects sub-proofs and publishes block proofs in order.

use clap::Parser;

/// push0 aggregator: records proved parts, releases joins, publishes block proofs in order
#[derive(Parser, Debug)]
#[command(name = "push0-aggregator", version)]
struct Args {
    #[command(flatten)]
    common: push0_runtime::CommonArgs,
}

fn main() {
    let args = Args::parse();
    push0_runtime::service::main(
        push0_aggregator::SERVICE,
        &args.common,
        |bus, shutdown| async move {
            // One active aggregator; any others stand by for its lease.
            push0_runtime::lease::while_leader(&bus, "aggregator", shutdown, |active| {
                push0_aggregator::run(bus.clone(), active)
            })
            .await
        },
    );
}
