//! Helpers shared by several areas of the suite: the admin client, approvals, audit
//! files, fault injection, a private redis-server and an approval's history in the trail.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod browser;
pub mod faults;
pub mod redis;
pub mod redis_ha;
pub mod trail;
