//! Helpers shared by several areas of the suite: the admin client, approvals, audit
//! files, fault injection and a private redis-server.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod faults;
pub mod redis;
