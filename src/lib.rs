//! portcullis: a reverse proxy that lets AI agents call real APIs without holding
//! their keys. Each request is canonicalised, attributed to an agent, classified
//! into a tool with a risk, decided in one gate, and forwarded, denied or parked.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod app;
pub mod approval;
pub mod audit;
pub mod body;
pub mod canon;
pub mod classify;
pub mod cli;
pub mod cli_view;
pub mod conditions;
pub mod config;
pub mod conn_limits;
pub mod conn_watch;
pub mod decode;
pub mod demo;
pub mod demo_run;
pub mod digest;
pub mod error;
pub mod explain;
pub mod fastmap;
pub mod identity;
pub mod internal;
pub mod lint;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod metrics_scrape;
pub mod notify;
pub mod openapi;
pub mod override_scan;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod rationale;
pub mod refusals;
pub mod server;
pub mod signals;
pub mod store;
pub mod switchboard;
pub mod tooltable;
pub mod ui;
pub mod upstream;
