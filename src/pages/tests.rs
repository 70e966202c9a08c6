//! Randomised differential tests of the page allocator against a naive
//! model.
