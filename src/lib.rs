//! bake: build golden AWS machine images from TOML recipes.
//!
//! The library exposes every operation the CLI runs, so tests and other tools can drive bake
//! without the binary. Layers, each using only those below: `build`/`images`/`deploy` →
//! `communicator` → `fingerprint` → `aws` → `recipe`, with `ui` and `retry` used throughout.

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
