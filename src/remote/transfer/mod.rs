//! What every transport sends to a builder, built once: the tar stream format, the plans
//! flattened into things to create on the builder (items), and the builder-side shell.
//!
//! SSH and SSM both use this module and never each other, so an upload or a step behaves the
//! same whichever transport the recipe chose.

pub(crate) mod fetch;
pub(crate) mod items;
pub(crate) mod script;
pub(crate) mod sftp;
pub(crate) mod tar;
pub(crate) mod verify;
