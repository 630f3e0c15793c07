//! The `waxwing` package's library side: the module list of this build, so
//! that the binary and the in-process integration tests start the same server.
#![forbid(unsafe_code)]

pub mod modules;
