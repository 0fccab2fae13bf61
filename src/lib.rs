//! bake: build golden AWS machine images from TOML recipes.
//!
//! The library exposes every operation the CLI runs, so tests and other tools can drive bake
//! without the binary. Layers, each using only those below it (`tests/tidy.rs` checks this on
//! every `crate::`/`super::` path):
//!
//! ```text
//! cli                      commands: parse, call one operation, render the result
//! deploy | images | gc     peers, none imports another
//! pipeline                 the bake itself; lookup: does a fingerprint have its image
//! remote                   the communicator: any → ssh | ssm (peers) → transfer
//! plan                     upload plans, hash cache, the fingerprint
//! aws                      clients, typed errors, EC2 waits
//! recipe                   TOML → validated model, diagnostics
//! ui | retry               progress and lines (and the Sink transports write to); polling
//! ```
//!
//! Data flows one way: recipe → plan (fingerprint, cache check) → pipeline through a
//! communicator → image → copies, deploy.

pub mod aws;
pub mod cli;
pub mod deploy;
pub mod gc;
pub mod images;
pub mod pipeline;
pub mod plan;
pub mod recipe;
pub mod remote;
pub mod retry;
pub mod ui;
