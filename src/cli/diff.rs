//! `graygate diff OLD NEW`: before applying a change, what it does to new calls.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    pub old: PathBuf,
    pub new: PathBuf,
    /// Deterministic userid samples routed under both files.
    #[arg(long, default_value_t = 100_000)]
    pub sample: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let load = |p: &PathBuf| crate::config::load_offline(p).map(|(s, _)| s);
    let (old, new) = match (load(&args.old), load(&args.new)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let d = crate::config::diff::diff(&old, &new);
    let moves = crate::config::diff::moved_shares(&old, &new, args.sample.max(1));
    if args.json {
        println!("{}", serde_json::json!({"changes": d, "rules": moves}));
        return Ok(ExitCode::SUCCESS);
    }
    println!("changes: {d}");
    println!(
        "new calls whose cluster changes, per rule of {} ({} samples):",
        args.old.display(),
        args.sample
    );
    for m in &moves {
        print!("  {:<24} {:>6.2}% moved", m.rule, m.moved * 100.0);
        for (flow, share) in &m.flows {
            print!("   {flow}: {:.2}%", share * 100.0);
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
