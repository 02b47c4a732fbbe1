//! One module per berthctl command.

pub mod apply;
pub mod certs;
pub mod cluster;
pub mod contexts;
pub mod delete;
pub mod describe;
pub mod get;
pub mod logs;
pub mod node;
pub mod scale;
pub mod snapshot;
pub mod tokens;
pub mod top;
pub mod up;
