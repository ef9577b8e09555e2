//! # co2cast-pipeline
//!
//! The streaming job. Proxy messages are consumed from Kafka, validated (rejects go to the
//! dead-letter topic with their provenance), folded into keyed latest-value state, and the
//! affected years are re-estimated; changed daily rows are built as Arrow record batches and
//! published to `co2cast.estimates.daily` as new revisions, with the daily grid carbon intensity
//! to `co2cast.grid_intensity.daily`. Offsets, state and what has
//! been published are checkpointed together, atomically, so a restart after a crash resumes
//! exactly where the last checkpoint left off.

pub mod checkpoint;
pub mod embedded;
pub mod error;
pub mod estimates;
pub mod grid_intensity;
pub mod kafka_sink;
pub mod lake;
pub mod lake_stage;
pub mod national_stage;
pub mod partitioner;
pub mod province_ensemble;
pub mod processor;
pub mod readiness;
pub mod replay;
pub mod retry;
pub mod role;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod topics;

pub use processor::{Processor, ProcessorConfig, RunSummary};
pub use topics::{DLQ_TOPIC, ESTIMATES_TOPIC, GRID_INTENSITY_TOPIC, TopicNames};
