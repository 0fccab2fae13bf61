//! bake: build golden AWS machine images from TOML recipes.

pub mod communicator;
pub mod recipe;
pub mod retry;
