//! tactful: consent-first streaming personalization.
//!
//! Data flows ingest → decode ([`codec`]) → consent gate ([`consent`]) →
//! segments over per-user state ([`segments`], [`state`]) → publish, with the
//! pure core in [`processor`] and the Kafka shell in [`pipeline`].

pub mod codec;
pub mod consent;
pub mod model;
pub mod processor;
pub mod segments;
pub mod state;
pub mod config;
pub mod pipeline;
pub mod telemetry;
pub mod admin;
pub mod demo;
pub mod synthetic;
