//! Helpers shared by the integration tests (each test binary uses a different part).
#![allow(dead_code)]

pub mod receipts;
