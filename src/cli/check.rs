//! `graygate check`: validate a routes file. Exit 0 with a summary, or 1 with every error as
//! `file:line:column: message`.

use std::process::ExitCode;

use super::ConfigArg;

pub fn run(args: ConfigArg) -> anyhow::Result<ExitCode> {
    match crate::config::load(&args.config) {
        Ok(s) => {
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
