//! The `graygate` binary: parse the command line, run it, turn the result into an exit code.

use std::process::ExitCode;

/// mimalloc: a turn allocates and frees a few dozen small blocks (header maps, futures,
/// buffers); glibc malloc spent about 5% of the gateway's CPU on them under load, mimalloc's
/// per-thread free lists roughly halve that. Only the binary sets it: the library stays
/// allocator-neutral for embedders and benches.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    graygate::cli::main()
}
