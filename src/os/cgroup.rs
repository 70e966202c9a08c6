//! The process's control group: its memory limits and usage, and the CPUs
//! it may use, read from the cgroup file systems (v1, v2 and hybrid
//! hierarchies) without allocating.
#![allow(dead_code)]
