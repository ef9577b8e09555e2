//! # co2cast-data
//!
//! Loaders for co2cast's real inputs. Every loader reports problems as a [`DataError`] that
//! names the file and the field; none of them panics on bad input.

pub mod activity;
pub mod bundle;
pub mod ceads;
pub mod error;
pub mod proxies;
pub mod wind;

pub use bundle::{Dataset, embedded, load_dir};
pub use error::DataError;
