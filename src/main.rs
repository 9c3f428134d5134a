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
