//! End-to-end tests in one binary (one link step): the real `gantry` binary,
//! plugins built from source with the SDK, peers on 127.0.0.1.

mod alb;
mod analysis;
mod approvals;
mod attacks;
mod audit;
mod authoring;
mod aws_credentials;
mod barriers;
mod blue_green;
mod certs;
mod crashes;
mod ecs;
mod editor;
mod embedder;
mod faults;
mod guide;
mod judge;
mod migrate;
mod notify;
mod notion;
mod peers;
mod pipelines;
mod probes;
mod redis;
mod registry;
mod report;
mod rollout;
mod runs;
mod sandbox;
mod secret_sources;
mod sql_grants;
mod stores;
mod support;
mod vault;
mod wordpress;
