//! `cartflow generate` (placeholder until the generator lands in the next commit).
use anyhow::Result;

use crate::cli::GenerateArgs;

pub fn run(_args: &GenerateArgs) -> Result<()> {
    anyhow::bail!("generate is not built yet")
}
