//! nonstop-probe (being built)
