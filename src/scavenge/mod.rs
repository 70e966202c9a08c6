//! The scavenger: gives free pages back to the OS (under construction).

pub mod index;
