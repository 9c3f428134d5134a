// mimalloc: the engine makes millions of small, short-lived allocations (containers between
// operators, per-key state); glibc malloc spent a fifth of the run in its free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cartflow::cli::Cli::parse();
    cartflow::logging::init(&cli.log);
    match cartflow::commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
