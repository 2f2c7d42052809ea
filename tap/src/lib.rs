//! The event tap: live, enriched events as JSON lines, for debugging a histogram by
//! looking at the events behind it.
//!
//! Workers hand each batch to the [`Tap`] with one relaxed load when nobody listens and
//! a `try_send` of the batch (a reference count, no copy) when someone does; decoding
//! and JSON happen on the tap's own thread. Each subscriber has a bounded queue: a slow
//! one loses tap events (counted), never metrics. A [`sink::FileSink`] is a subscriber
//! that writes hourly gzip files.

mod filter;
mod hub;
pub mod sink;
mod time;

pub use filter::{Filter, FilterError};
pub use hub::{Tap, TapStats};
pub use time::rfc3339_nanos;
