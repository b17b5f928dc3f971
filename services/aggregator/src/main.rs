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
    push0_runtime::service::runtime(&args.common).block_on(serve(args));
}

async fn serve(args: Args) {
    let result = async {
        let started =
            push0_runtime::service::start(push0_aggregator::SERVICE, &args.common).await?;
        // One active aggregator; any others stand by for its lease.
        let bus = started.bus;
        push0_runtime::lease::while_leader(&bus, "aggregator", started.shutdown, |active| {
            push0_aggregator::run(bus.clone(), active)
        })
        .await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "aggregator stopped");
        eprintln!("push0-aggregator: {e}");
        std::process::exit(push0_runtime::service::exit_code(&e));
    }
}
