//! `shop`: the demo shop service. Routes:
//!
//! | route | does |
//! | --- | --- |
//! | `GET /products` | the catalog |
//! | `POST /cart/{id}/add?sku=&qty=` | adds to customer `id`'s cart |
//! | `POST /cart/{id}/remove?sku=&qty=` | removes from the cart |
//! | `GET /cart/{id}` | the cart |
//! | `POST /cart/{id}/checkout?coupon=&country=` | places an order (201) |
//! | `GET /orders/{id}` | an order |
//! | `GET /healthz` | `{"status":"ok"}` |
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use shop::cart::Cart;
use shop::catalog::{Catalog, StockError};
use shop::http::{self, Request, Response};
use shop::orders::{OrderBook, OrderError};
use shop::pricing::Pricing;

/// The demo shop service.
#[derive(Debug, Parser)]
#[command(name = "shop", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Worker threads handling requests.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

fn main() -> ExitCode {
    start_agent();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the nonstop agent linked into this binary (configured by `NONSTOP_*` variables).
#[cfg(feature = "agent")]
fn start_agent() {
    nonstop_agent::start();
}

/// Built without the `agent` feature: run it under `nonstop run` to instrument it.
#[cfg(not(feature = "agent"))]
fn start_agent() {}

fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    println!("shop: listening on http://{addr}");

    let shop = Arc::new(Mutex::new(Shop::new()));
    let handler: Arc<http::Handler> = Arc::new(move |request: &Request| route(&shop, request));
    http::serve(listener, args.workers, handler).context("serving http")
}

/// Everything the shop keeps, behind one lock.
struct Shop {
    catalog: Catalog,
    pricing: Pricing,
    carts: HashMap<String, Cart>,
    orders: OrderBook,
}

impl Shop {
    fn new() -> Shop {
        Shop {
            catalog: Catalog::demo(),
            pricing: Pricing::demo(),
            carts: HashMap::new(),
            orders: OrderBook::default(),
        }
    }
}

fn route(shop: &Mutex<Shop>, request: &Request) -> Response {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    // A handler that panicked left the data as consistent as our single-step updates make it.
    let mut shop = shop.lock().unwrap_or_else(PoisonError::into_inner);
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) => Response::json(200, json!({ "status": "ok" })),
        ("GET", ["products"]) => list_products(&shop),
        ("GET", ["cart", customer]) => {
            let cart = shop
                .carts
                .get(*customer)
                .cloned()
                .unwrap_or_else(|| Cart::new(customer));
            Response::json(200, cart_json(&cart))
        }
        ("POST", ["cart", customer, "add"]) => add_to_cart(&mut shop, customer, request),
        ("POST", ["cart", customer, "remove"]) => remove_from_cart(&mut shop, customer, request),
        ("POST", ["cart", customer, "checkout"]) => checkout(&mut shop, customer, request),
        ("GET", ["orders", id]) => get_order(&shop, id),
        (
            _,
            ["healthz" | "products"] | ["cart", _] | ["cart", _, "add" | "remove" | "checkout"],
        )
        | (_, ["orders", _]) => {
            Response::error(405, format!("{} not allowed here", request.method))
        }
        _ => Response::error(404, format!("no route for {}", request.path)),
    }
}

fn list_products(shop: &Shop) -> Response {
    let products: Vec<_> = shop.catalog.products().collect();
    Response::json(200, json!({ "products": products }))
}

fn add_to_cart(shop: &mut Shop, customer: &str, request: &Request) -> Response {
    let (sku, qty) = match sku_and_qty(request) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(product) = shop.catalog.get(sku) else {
        return Response::error(404, format!("unknown product: {sku}"));
    };
    let cart = shop
        .carts
        .entry(customer.to_string())
        .or_insert_with(|| Cart::new(customer));
    cart.add(product, qty);
    Response::json(200, cart_json(cart))
}

fn remove_from_cart(shop: &mut Shop, customer: &str, request: &Request) -> Response {
    let (sku, qty) = match sku_and_qty(request) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let cart = shop
        .carts
        .entry(customer.to_string())
        .or_insert_with(|| Cart::new(customer));
    cart.remove(sku, qty);
    Response::json(200, cart_json(cart))
}

fn checkout(shop: &mut Shop, customer: &str, request: &Request) -> Response {
    let coupon = request.param("coupon");
    let country = request.param("country").unwrap_or("US");
    let Shop {
        catalog,
        pricing,
        carts,
        orders,
    } = shop;
    let mut cart = carts
        .remove(customer)
        .unwrap_or_else(|| Cart::new(customer));
    let result = orders.place_order(catalog, pricing, &mut cart, coupon, country);
    if !cart.is_empty() {
        carts.insert(customer.to_string(), cart);
    }
    match result {
        Ok(order) => Response::json(201, json!(order)),
        Err(err) => {
            let status = match err {
                OrderError::Stock(StockError::OutOfStock { .. }) => 409,
                _ => 400,
            };
            Response::error(status, err.to_string())
        }
    }
}

fn get_order(shop: &Shop, id: &str) -> Response {
    let order = id.parse().ok().and_then(|id| shop.orders.get(id));
    match order {
        Some(order) => Response::json(200, json!(order)),
        None => Response::error(404, format!("no order {id}")),
    }
}

/// The `sku` and `qty` parameters; `qty` defaults to 1 and must be 1..=1000.
fn sku_and_qty(request: &Request) -> Result<(&str, u32), Response> {
    let sku = request
        .param("sku")
        .filter(|sku| !sku.is_empty())
        .ok_or_else(|| Response::error(400, "missing parameter: sku"))?;
    let qty = match request.param("qty") {
        None => 1,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|qty| (1..=1000).contains(qty))
            .ok_or_else(|| Response::error(400, format!("qty must be 1 to 1000, not {text:?}")))?,
    };
    Ok((sku, qty))
}

fn cart_json(cart: &Cart) -> serde_json::Value {
    json!({
        "customer": cart.customer,
        "lines": cart.lines,
        "item_count": cart.item_count(),
        "total_cents": cart.total(),
    })
}
