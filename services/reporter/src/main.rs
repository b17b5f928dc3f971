//! `push0-reporter`: reports each team's blocks to an Ethproofs-compatible API.

use std::path::PathBuf;

use clap::Parser;
use push0_reporter::{ApiConfig, Config, Rate};
use push0_runtime::RuntimeError;

/// push0 reporter: reports queued, proving and proved blocks of every team with an
/// `ethproofs_cluster_id` to an Ethproofs-compatible API. The API key comes from
/// `ETHPROOFS_API_KEY` or from `--ethproofs-key-file`, never from the command line.
#[derive(Parser, Debug)]
#[command(name = "push0-reporter", version)]
struct Args {
    #[command(flatten)]
    common: push0_runtime::CommonArgs,
    /// Base URL of the API (requests go to `<url>/proofs/queued`, `/proving`, `/proved`).
    #[arg(long, env = "PUSH0_ETHPROOFS_URL")]
    ethproofs_url: Option<String>,
    /// A file holding the API key (used when `ETHPROOFS_API_KEY` is not set).
    #[arg(long, env = "PUSH0_ETHPROOFS_KEY_FILE")]
    ethproofs_key_file: Option<PathBuf>,
    /// The API's rate limit per key: requests per window.
    #[arg(long, env = "PUSH0_ETHPROOFS_RATE", default_value = "60/60s")]
    ethproofs_rate: Rate,
    /// Print each request instead of sending it (no URL or key needed).
    #[arg(long, env = "PUSH0_ETHPROOFS_DRY_RUN", default_value_t = false)]
    dry_run: bool,
}

fn config(args: &Args) -> Result<Config, RuntimeError> {
    let key = push0_reporter::api_key(args.ethproofs_key_file.as_deref())?;
    let (base_url, key) = match (&args.ethproofs_url, key, args.dry_run) {
        (Some(url), Some(key), _) => (url.clone(), key),
        (url, _, true) => (url.clone().unwrap_or_default(), String::new()),
        (None, _, false) => {
            return Err(RuntimeError::Config(
                "--ethproofs-url (PUSH0_ETHPROOFS_URL) is required unless --dry-run".into(),
            ));
        }
        (Some(_), None, false) => {
            return Err(RuntimeError::Config(
                "no API key: set ETHPROOFS_API_KEY or --ethproofs-key-file".into(),
            ));
        }
    };
    Ok(Config {
        api: ApiConfig {
            base_url,
            key,
            dry_run: args.dry_run,
            rate: args.ethproofs_rate,
        },
    })
}

fn main() {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("push0-{}: {e}", push0_reporter::SERVICE);
            std::process::exit(push0_runtime::service::exit_code(&e));
        }
    };
    push0_runtime::service::main(
        push0_reporter::SERVICE,
        &args.common,
        |bus, shutdown| async move {
            // One active reporter: two would send everything twice and halve the rate.
            push0_runtime::lease::while_leader(&bus, "reporter", shutdown, |active| {
                push0_reporter::run(bus.clone(), config.clone(), active)
            })
            .await
        },
    );
}
