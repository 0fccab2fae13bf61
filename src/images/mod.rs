//! Images bake made: inventory with what uses each image, and snapshot-aware retention that
//! never touches an image still in use. (Whether a recipe already has its image is the
//! pipeline's lookup, [`crate::pipeline::lookup`], shared with deploy.)

pub mod retention;
pub mod usage;
