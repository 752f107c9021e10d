//! tactful: consent-first streaming personalization.
//!
//! Data flows ingest → decode ([`codec`]) → consent gate ([`consent`]) →
//! segments over per-user state ([`segments`], [`state`]) → publish, with the
//! pure core in [`processor`] and the Kafka shell in [`pipeline`].

pub mod admin;
pub mod changelog;
pub mod codec;
pub mod config;
pub mod consent;
pub mod demo;
pub mod erasure;
pub mod explain;
pub mod gen;
pub mod model;
pub mod pipeline;
pub mod processor;
pub mod replay;
pub mod report;
pub mod segments;
pub mod state;
pub mod synthetic;
pub mod telemetry;
