//! Integration tests of `statestream-store`, one module per area.

mod errors;
mod hash;
mod iter;
mod listener;
mod model;
mod persist;
mod source;
mod util;
