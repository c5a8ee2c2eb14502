//! actioncluster: a Bayeux pub/sub broker that speaks the protocol exactly as Faye does, so
//! Faye's browser and node.js clients connect to it unchanged.
//!
//! Layers, each importing only those before it:
//! `protocol` (pure wire model) → `engine` (clients, subscriptions, queues: in memory, in
//! redis in faye-redis's layout, or in redis's native layout with node-side fan-out) → `server`
//! (Bayeux processing, sessions, extensions) → `transport` (HTTP, websocket); `node` wires
//! them from a [`Config`]. Beside them, `cluster` (cache, stats, web messages, rooms, tasks and
//! peers shared by the nodes, in memory or in redis) imports only `protocol`, `redis_conn`
//! and `telemetry`. Two node-level pieces need both the Bayeux server and the cluster, and sit
//! beside `node`: `chat` (rooms' delivery over `/actionHero/chat`, and Faye clients' chat
//! verbs on their connection channels) and `commands` (cluster commands over
//! `/actionHero/cluster`, which may target a chat connection).
//!
//! `ARCHITECTURE.md` in the repository has the message's and the task's paths, the code map
//! and the invariants.
#![forbid(unsafe_code)]

pub mod chat;
/// The Rust client (the `actioncluster-client` crate), re-exported so existing code keeps compiling.
pub use actioncluster_client as client;
mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
mod dashboard;
pub mod engine;
pub mod node;
mod periodic;
/// The Bayeux wire model (the `actioncluster-protocol` crate).
pub use actioncluster_protocol as protocol;
pub mod redis_conn;
pub mod server;
pub mod telemetry;
pub mod transport;

pub use chat::{Chat, ChatConnection, ChatError, ChatPayload, ChatSender, RoomMatch};
pub use client::{
    CallbackSubscription, Client, ClientBuilder, ClientError, ClientExtension, ConnectionState, ConnectionType,
    Delivery, InProcessServer, StateWatcher, Subscription, TransportPreference,
};
pub use cluster::{
    Cache, CacheEntry, Cluster, ClusterError, ClusterSettings, MemoryClock, Numeric, Scope, Stats, WebMessages,
};
pub use cluster::{
    EnqueueOptions, FailReason, FailedEntry, Inspection, PeerEvent, Target, TaskContext, TaskDefinition, TaskError,
    TaskFailure, TaskRecord, TaskScope, TaskSettings, Tasks,
};
pub use cluster::{RoomAdd, RoomStatus, Rooms};
pub use commands::{CommandCall, CommandError, CommandResponse, CommandResult, Commands};
pub use config::{Config, ConfigError, RedisLayout};
pub use node::{Node, NodeBuilder, NodeError};
pub use protocol::{BayeuxError, Message};
pub use server::ProtectedChannels;
pub use server::{Extension, RequestContext, Server, ServerEvent};

/// The README's Rust examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
