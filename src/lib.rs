//! graygate: a gray-routing (canary) gateway for the ODFS dialog interfaces.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod located;
pub mod protocol;
