//! Symbolization in the process (the `symbolize` feature): the names,
//! source files and lines of a profile's addresses, inlined calls
//! included, read from the mapped files' DWARF debug info through the
//! `addr2line` crate, or their symbol tables where there is none.
//!
//! A profile written with names needs no access to the binary where it is
//! read: the program may have been deleted or replaced, or run in a
//! container the reader cannot see into. Without the feature, tools
//! symbolize the addresses from the files the mappings name.
//!
//! It runs only while a profile is written (never on an allocation path),
//! and it allocates freely: the files' debug info is parsed once per
//! profile, which takes memory and time in proportion to it (tens of
//! milliseconds for a small program).

use std::collections::HashMap;

use super::maps::{Code, Object};
use super::pprof::Line;

/// Names addresses of one profile's [`Code`], each file parsed once.
pub(crate) struct Symbolizer<'c> {
    objects: &'c [Object],
    /// Each file's loader, by path (`None`: it cannot be read).
    loaders: HashMap<&'c str, Option<addr2line::Loader>>,
}

impl<'c> Symbolizer<'c> {
    pub(crate) fn new(code: &'c Code) -> Self {
        Symbolizer { objects: &code.objects, loaders: HashMap::new() }
    }

    /// The functions at `address` (a return address minus one), innermost
    /// first; empty if no mapped file tells.
    pub(crate) fn lines(&mut self, address: u64) -> Vec<Line> {
        let Some(object) = self.objects.iter().find(|o| o.range.contains(&address)) else {
            return Vec::new();
        };
        let loader = self.loaders.entry(object.path.as_str()).or_insert_with(|| addr2line::Loader::new(&object.path).ok());
        let Some(loader) = loader.as_ref() else { return Vec::new() };
        let probe = address.wrapping_sub(object.bias);
        let mut lines = Vec::new();
        if let Ok(mut frames) = loader.find_frames(probe) {
            while let Ok(Some(frame)) = frames.next() {
                let Some(function) = frame.function.as_ref().and_then(|f| f.demangle().ok()) else { continue };
                let (file, line) = frame.location.map_or(("", 0), |l| (l.file.unwrap_or(""), l.line.unwrap_or(0)));
                lines.push(Line { function: function.into_owned(), file: file.to_owned(), line: i64::from(line) });
            }
        }
        if lines.is_empty() {
            if let Some(name) = loader.find_symbol(probe) {
                let function = addr2line::demangle_auto(name.into(), None).into_owned();
                lines.push(Line { function, file: String::new(), line: 0 });
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_name() -> u64 {
        std::hint::black_box(7)
    }

    /// This test's own function is named, with this file and a line in
    /// it; an address in no mapping gets nothing.
    #[test]
    fn names_a_function_of_this_binary() {
        let code = super::super::maps::code();
        let mut symbolizer = Symbolizer::new(&code);
        let address = a_function_with_a_name as *const () as usize as u64 + 1;
        let lines = symbolizer.lines(address);
        let outer = lines.last().unwrap_or_else(|| panic!("no lines for {address:#x}"));
        assert!(outer.function.ends_with("a_function_with_a_name"), "{lines:?}");
        assert!(outer.file.ends_with("symbolize.rs") && outer.line > 0, "{lines:?}");
        assert!(symbolizer.lines(0x10).is_empty());
    }
}
