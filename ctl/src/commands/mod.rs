//! One module per berthctl command.

pub mod apply;
pub mod cluster;
pub mod delete;
pub mod describe;
pub mod get;
pub mod scale;
pub mod up;
