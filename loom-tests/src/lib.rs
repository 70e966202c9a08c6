//! Model checks of scavalloc's concurrency protocols. The tests live in
//! `tests/` and only run under `RUSTFLAGS="--cfg loom"`; see `.ci/run`.
