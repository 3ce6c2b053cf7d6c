//! Building blocks for models: named parameters ([`ParamStore`],
//! [`ParamScope`]), initializers ([`Init`], [`default_init`]) and layers
//! ([`Linear`]).

pub mod init;
pub mod linear;
pub mod params;

pub use init::{Init, default_init};
pub use linear::Linear;
pub use params::{ParamScope, ParamStore};
