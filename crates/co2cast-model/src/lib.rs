//! # co2cast-model
//!
//! The science of co2cast with no I/O: provinces and sectors, China's calendar, emission
//! factors, calibration of proxy-to-emission ratios against a base-year inventory, daily
//! estimation, Monte Carlo uncertainty with correlated error sources, and backtest scoring.
//! Everything here is a pure function of its inputs, so it can be read and tested without
//! Kafka or files.

pub mod backtest;
pub mod calendar;
pub mod calibration;
pub mod domain;
pub mod estimate;
pub mod grid_intensity;
pub mod inventory;
pub mod proxy;
pub mod references;
pub mod series;
pub mod testkit;

pub use domain::{Province, Sector};
