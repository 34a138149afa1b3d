//! A Rust function for AWS Lambda with nonstop: one line added to the usual `main`
//! (`.layer(NonstopLayer::new())`). It prices an order and greets the customer.
//!
//! Run it on Lambda (or under a local Runtime API emulator, as the tests do) with
//! `NONSTOP_SERVER` and `NONSTOP_TOKEN` set, then add rules for the service named like
//! the function (`AWS_LAMBDA_FUNCTION_NAME`). With `--without-nonstop` it runs the same
//! function without the layer, which the tests compare against.
use lambda_runtime::{Error, LambdaEvent, Runtime, service_fn};
use nonstop_lambda::NonstopLayer;
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Deserialize)]
struct Order {
    customer: String,
    items: Vec<u32>,
}

#[derive(Serialize)]
struct Receipt {
    message: String,
    total: u64,
}

/// The total price of the items, in cents.
#[inline(never)]
fn price(items: &[u32]) -> u64 {
    let count = items.len() as u64;
    let total: u64 = items.iter().map(|&i| u64::from(i)).sum();
    black_box((count, total)); // @mark priced
    total
} // @mark price_end (a line with code in release builds too)

async fn handler(event: LambdaEvent<Order>) -> Result<Receipt, Error> {
    let order = event.payload;
    let total = price(&order.items);
    Ok(Receipt {
        message: format!("thanks {}, that is {} cents", order.customer, total),
        total,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--without-nonstop") {
        return Runtime::new(service_fn(handler)).run().await;
    }
    Runtime::new(service_fn(handler))
        .layer(NonstopLayer::new())
        .run()
        .await
}
