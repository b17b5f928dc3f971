//! `push0-prover-gateway`: runs a team's provers.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use push0_prover_gateway::latency::Latency;
use push0_prover_gateway::prover::{Bundler, ExecProver, Prover, SimProver};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProverKind {
    /// Built-in simulated prover: sleeps for a sampled latency
    Sim,
    /// An external executable speaking the prover contract
    Exec,
}

/// push0 prover gateway: joins a team's consumer group and runs its prover, one task per slot
#[derive(Parser, Debug)]
#[command(name = "push0-prover-gateway", version)]
struct Args {
    #[command(flatten)]
    common: push0_runtime::CommonArgs,

    /// Team whose tasks this gateway proves
    #[arg(long, env = "PUSH0_TEAM")]
    team: String,

    /// Task classes to serve, comma-separated; default: every class of the team's workflow
    #[arg(long, env = "PUSH0_CLASSES", value_delimiter = ',')]
    classes: Vec<String>,

    /// Concurrent provers per class
    #[arg(long, env = "PUSH0_SLOTS", default_value_t = 1)]
    slots: usize,
    /// Pull priority within the team's consumer group: 0 is served first, up to 9; give a slow
    /// tier a higher number so it takes work only while the faster provers are busy
    #[arg(long, env = "PUSH0_PRIORITY", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: u8,

    /// Which prover runs the tasks
    #[arg(long, env = "PUSH0_PROVER", value_enum, default_value = "sim")]
    prover: ProverKind,

    /// Latency of the simulated prover: fixed:D, uniform:A..B or lognormal:MEDIAN,SIGMA
    #[arg(long, env = "PUSH0_SIM_LATENCY", default_value = "fixed:100ms")]
    sim_latency: Latency,

    /// Simulated prover only: while this file exists, leaves whose data contain the bytes
    /// `push0-sim-poison` fail (a poison-task drill); delete the file to "fix" the prover
    #[arg(long, env = "PUSH0_SIM_FAIL_WHILE")]
    sim_fail_while: Option<PathBuf>,

    /// External prover executable (with --prover exec); run as `<cmd> <args…> --task <manifest>`
    #[arg(long, env = "PUSH0_PROVER_CMD")]
    prover_cmd: Option<PathBuf>,

    /// Extra arguments for the external prover, before `--task`
    #[arg(
        long,
        env = "PUSH0_PROVER_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    prover_args: Vec<String>,

    /// Aggregate by bundling instead of proving (for proof systems without recursion): each
    /// child is checked with `<prover-cmd> <prover-args> verify --proof FILE` and the children
    /// are listed in order with their states chained
    #[arg(long, env = "PUSH0_BUNDLE_AGGREGATES")]
    bundle_aggregates: bool,

    /// Proof system reported for an external prover whose report names none
    #[arg(long, env = "PUSH0_PROOF_SYSTEM", default_value = "exec")]
    proof_system: String,

    /// A prover running longer than this is killed and its task retried
    #[arg(long, env = "PUSH0_TASK_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    task_timeout: Duration,

    /// RAYON_NUM_THREADS for each external prover; default: cores divided by slots
    #[arg(long, env = "PUSH0_PROVER_THREADS")]
    prover_threads: Option<usize>,

    /// Folder for task manifests and proof files
    #[arg(long, env = "PUSH0_WORK_DIR", default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,

    /// On SIGTERM, in-flight tasks get this long to finish before they are handed back
    #[arg(long, env = "PUSH0_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Name of this gateway in results and logs; default: host and process id
    #[arg(long, env = "PUSH0_GATEWAY_ID")]
    gateway_id: Option<String>,

    /// Proofs above this many bytes go to the object store
    #[arg(long, env = "PUSH0_INLINE_THRESHOLD", default_value_t = push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD)]
    inline_threshold: usize,
}

fn main() {
    let args = Args::parse();
    let prover = match args.prover {
        ProverKind::Sim => Prover::Sim(SimProver {
            latency: args.sim_latency.clone(),
            fail_while: args.sim_fail_while.clone(),
        }),
        ProverKind::Exec => {
            let Some(program) = args.prover_cmd.clone() else {
                eprintln!(
                    "push0-prover-gateway: --prover exec needs --prover-cmd (PUSH0_PROVER_CMD)"
                );
                std::process::exit(64);
            };
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Prover::Exec(ExecProver {
                program,
                args: args.prover_args.clone(),
                work_dir: args.work_dir.clone(),
                proof_system: args.proof_system.clone(),
                timeout: args.task_timeout,
                threads: Some(
                    args.prover_threads
                        .unwrap_or((cores / args.slots.max(1)).max(1)),
                ),
            })
        }
    };
    let bundler = match (&args.prover_cmd, args.bundle_aggregates) {
        (_, false) => None,
        (Some(cmd), true) => {
            let mut verifier = vec![cmd.display().to_string()];
            verifier.extend(args.prover_args.iter().cloned());
            Some(Bundler { verifier })
        }
        (None, true) => {
            eprintln!("push0-prover-gateway: --bundle-aggregates needs --prover-cmd");
            std::process::exit(64);
        }
    };
    let id = args.gateway_id.clone().unwrap_or_else(default_id);
    let config = push0_prover_gateway::Config {
        team: args.team.clone(),
        classes: args.classes.clone(),
        slots: args.slots.max(1),
        priority: args.priority,
        prover,
        bundler,
        grace: args.shutdown_grace,
        id,
        inline_threshold: args.inline_threshold,
    };
    push0_runtime::service::main(
        push0_prover_gateway::SERVICE,
        &args.common,
        |bus, shutdown| push0_prover_gateway::run(bus, config, shutdown),
    );
}

fn default_id() -> String {
    format!(
        "{}-{}",
        push0_runtime::host_name("gateway"),
        std::process::id()
    )
}
