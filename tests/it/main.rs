//! The integration suite: one test binary (one link of hyper, rustls, redis and rcgen)
//! with a module per area. `common` is the harness (the real binary, real upstreams,
//! clients); `support` holds the helpers several areas share.

mod common;
mod support;

mod approvals;
mod approvals_binding;
mod approvals_crash;
mod approvals_integrity;
mod approvals_replicas;
mod approvals_trail;
mod audit_queue;
mod audit_rotation;
mod audit_trail;
mod audit_verify;
mod bench_smoke;
mod canary;
mod canon_rejections;
mod check_cli;
mod conditions;
mod connections;
mod demo_cli;
mod deploy_manifests;
mod differential;
mod explain_matches_proxy;
mod faults_audit_disk;
mod faults_audit_rotation;
mod faults_park_kill;
mod faults_redis;
mod faults_reload;
mod faults_store_disk;
mod gate_e2e;
mod h2_raw;
mod hardening;
mod header_hygiene;
mod mcp;
mod mcp_differential;
mod mcp_sdk;
mod metrics_health;
mod openapi;
mod operator_ui;
mod quickstart;
mod redis_sentinel;
mod redis_tls;
mod reload_live;
mod replicas;
mod replicas_invalidation;
mod replicas_leases;
mod secrets_never_logged;
mod shutdown;
mod store_conformance;
mod streaming;
mod timeouts;
mod tls;
