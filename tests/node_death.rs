//! Node death behind a load balancer: clients of a killed node reconnect through the
//! balancer (tests/common/balancer.rs) to a live node on the same redis and receive again.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/balancer.rs"]
mod balancer;
