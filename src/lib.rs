//! tactful: consent-first streaming personalization.
//!
//! One event's path: the Kafka driver's ingest ([`pipeline`]) → decode
//! ([`codec`]) → validate ([`validate`]) → consent gate and minimisation
//! ([`consent`]) → facts in partition-owned state ([`state`]) → evaluate the
//! segments in force and diff against the last published profile
//! ([`segments`], [`profile`]) → the driver's publish. [`processor`]
//! coordinates the pure core's stages.

// The pure core: records in, state and profile updates out; no I/O, no clock.
pub mod codec;
pub mod consent;
pub mod experiments;
pub mod model;
pub mod processor;
pub mod profile;
pub mod segments;
pub mod state;
pub mod validate;

// Drivers of the core: the Kafka pipeline, and the offline commands.
pub mod demo;
pub mod gen;
pub mod pipeline;
pub mod replay;
pub mod report;

// Support: configuration, the control flags and clock, telemetry, the admin
// endpoint and what it serves, time units, synthetic data, the allocator.
pub mod admin;
pub mod allocator;
pub mod config;
pub mod consent_writer;
pub mod control;
pub mod erasure;
pub mod explain;
pub mod privacy_center;
pub mod synthetic;
pub mod telemetry;
pub mod time;
