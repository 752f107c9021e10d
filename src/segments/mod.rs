//! Segments: definitions (parse, validate), the rule engine and reasons. Pure.

pub mod definition;
pub mod engine;

pub use definition::{Catalogue, DefinitionError, Segment, Tier};

#[cfg(test)]
mod tests;
