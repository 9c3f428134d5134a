// mimalloc: the engine makes millions of small, short-lived allocations (containers between
// operators, per-key state); glibc malloc spent a fifth of the run in its free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e`, v2 and v3 alike (libmimalloc-sys names no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Freed memory stays with the allocator. Each step frees and re-allocates much the same memory;
    // handed back to the kernel a second after being freed (mimalloc's default), it was zeroed
    // again by page faults on the next step: ~15 % of a run's time, for ~8 % less peak memory.
    // SAFETY: sets a plain integer option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = match cartflow::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` go to stdout and succeed; a wrong command line is a
        // configuration error, which a restart will not cure.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return std::process::ExitCode::from(cartflow::exit::EX_CONFIG);
        }
    };
    cartflow::logging::init(&cli.log, cli.log_format);
    exit_on_lost_peer();
    match cartflow::commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            cartflow::exit::code(&error)
        }
    }
}

/// In a run of several processes, a peer that dies makes timely's network threads panic with
/// "timely communication error: ..." (a prefix timely keeps for such sniffing), and the worker
/// threads then panic on its poisoned queues. One clear line and exit code 1 instead; the store is
/// left as after a kill (its last boundary is whole), and a restart bootstraps again.
fn exit_on_lost_peer() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if let Some(message) = message.filter(|m| m.starts_with("timely communication error")) {
            eprintln!(
                "error: the connection to another process of this run broke ({message}); this process stops too \
                 (restart every process of the run: each bootstraps again)"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}
