//! The demo shop: a small HTTP service that sells a few products, the program `nonstop demo` instruments.
//!
//! # Overview
//!
//! - [`catalog::Catalog`]: products (prices in cents, stock) and customer tiers.
//! - [`cart::Cart`]: what a customer is about to buy.
//! - [`pricing::Pricing`]: coupons, tier and bulk discounts, tax by country → a [`pricing::Quote`].
//! - [`orders::OrderBook`]: places orders (stock check, pricing, record) and keeps them by id.
//! - [`http`]: a tiny HTTP/1.1 server over `std::net` that the binary's routes run on.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cart;
pub mod catalog;
pub mod http;
pub mod orders;
pub mod pricing;
