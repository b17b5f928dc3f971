//! `push0-plonky2`: see `push0-plonky2 --help` and README.md.

fn main() {
    push0_plonky2::guard::one_line_hook();
    let args: Vec<String> = std::env::args().collect();
    // A panic has already been reported on one stderr line by the hook: exit 1 ("anything else").
    let code = std::panic::catch_unwind(|| push0_plonky2::cli::run(args)).unwrap_or(1);
    std::process::exit(code);
}
