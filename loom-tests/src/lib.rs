//! Model checks of scavalloc's concurrency protocols. The tests live in
//! `tests/` and only run under `RUSTFLAGS="--cfg loom"`; see `.ci/run`.

/// Runs `f` under loom's model checker with the bound every model check
/// here uses (three preemptions: enough for the protocols' races, and it
/// keeps a run within minutes).
#[cfg(loom)]
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}
