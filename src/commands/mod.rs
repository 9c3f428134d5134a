//! One module per job of the command line.

pub mod archive;
pub mod batch;
pub mod bench;
pub mod demo;
pub mod generate;
pub mod hbase;
pub mod query;
pub mod run;
pub mod serve;
pub mod simulate;
pub mod stats;

use crate::cli::Command;

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Batch(args) => batch::run(&args).map(|_| ()),
        Command::Run(args) => run::run(&args).map(|_| ()),
        Command::Simulate(args) => simulate::run(&args).map(|_| ()),
        Command::Archive(args) => archive::run(&args).map(|_| ()),
        Command::HiveDdl(args) => archive::hive_ddl(&args, &mut std::io::stdout().lock()),
        Command::HbaseInit(args) => hbase::init(&args),
        Command::HbaseStandIn(args) => hbase::stand_in(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Query(args) => query::run(&args, &mut std::io::stdout().lock()),
        Command::Generate(args) => generate::run(&args).map(|_| ()),
        Command::Bench(args) => bench::run(&args),
        Command::Stats(args) => stats::run(&args, &mut std::io::stdout().lock()),
    }
}
