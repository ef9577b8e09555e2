//! # co2cast-ingest
//!
//! The pure part of ingest: proxy message contracts, validation with bounded reject codes,
//! plausibility caps, the keyed latest-value state that makes duplicates and replays
//! harmless, and per-signal watermarks with idle detection. No Kafka and no files here, so
//! the rules can be read and tested on their own (and benchmarked without a broker).

pub mod caps;
pub mod decode;
pub mod message;
pub mod state;
pub mod validate;
pub mod watermark;

pub use caps::PlausibilityCaps;
pub use message::{Granularity, RawProxyMessage, Topic};
pub use state::{ProxyState, Upsert};
pub use validate::{Correction, Reject, RejectCode, ValidProxy, ValidationRules, validate, validate_family};
pub use watermark::Watermarks;
