//! Memory pressure: the kernel's pressure-stall information (the cgroup's
//! own `memory.pressure`, else `/proc/pressure/memory`) and systemd's
//! `MEMORY_PRESSURE_WATCH` protocol, read without allocating.
#![allow(dead_code)]
