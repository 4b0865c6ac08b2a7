//! portcullis: a reverse proxy that lets AI agents call real APIs without holding
//! their keys. Each request is canonicalised, attributed to an agent, classified
//! into a tool with a risk, decided in one gate, and forwarded, denied or parked.
#![forbid(unsafe_code)]

pub mod body;
pub mod canon;
pub mod classify;
pub mod config;
pub mod error;
pub mod policy;
