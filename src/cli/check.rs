//! `graygate check`: validate a routes file. Exit 0 with a summary, or 1 with every error as
//! `file:line:column: message`. Files the config names that are not on this machine are
//! reported as notes (stderr) and do not fail the check.

use std::process::ExitCode;

use super::ConfigArg;

pub fn run(args: ConfigArg) -> anyhow::Result<ExitCode> {
    // Often run away from where the file is deployed (CI, a laptop): a named file that is not
    // on this machine (a Secret's token in a pod) is a note on stderr, not an error.
    match crate::config::load_offline(&args.config) {
        Ok((s, notes)) => {
            for n in &notes {
                eprintln!(
                    "{}:{}:{}: note: {}: {}",
                    n.file, n.line, n.column, n.path, n.message
                );
            }
            println!("{}: ok", args.config.display());
            println!("{}", crate::config::compile::summary(&s));
            Ok(ExitCode::SUCCESS)
        }
        Err(errs) => {
            println!("{errs}");
            Ok(ExitCode::from(1))
        }
    }
}
