//! The span layer: size classes, spans, per-class central lists and
//! per-thread caches (under construction; see issue 4).

pub mod sizeclass;
