//! nonstop-agent (being built)
#![forbid(unsafe_code)]
