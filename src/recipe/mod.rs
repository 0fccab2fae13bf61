//! Recipes: the TOML file a user writes, parsed with spans, validated without AWS, and turned
//! into the typed [`model::Recipe`] the rest of bake consumes.

pub mod model;
