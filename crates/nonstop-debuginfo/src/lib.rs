//! nonstop-debuginfo (being built)
#![forbid(unsafe_code)]
