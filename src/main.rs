//! The `graygate` binary: parse the command line, run it, turn the result into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    graygate::cli::main()
}
