//! The shop binary over real HTTP on loopback: each test starts its own `shop --listen 127.0.0.1:0`
//! (its own process, so the catalog's stock and order ids start fresh).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// A running shop, killed when dropped.
struct Shop {
    child: Child,
    addr: String,
}

impl Shop {
    fn start() -> Shop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the shop binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the shop's first line");
        let addr = line
            .trim()
            .strip_prefix("shop: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Shop { child, addr }
    }

    /// Sends one request; returns the status and the parsed JSON body.
    fn request(&self, method: &str, target: &str) -> (u16, Value) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect to the shop");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.addr
        )
        .expect("send request");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        assert!(
            head.contains("Content-Type: application/json"),
            "head: {head}"
        );
        (status, serde_json::from_str(body).expect("JSON body"))
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn products_lists_the_catalog_by_sku() {
    let shop = Shop::start();
    let (status, body) = shop.request("GET", "/products");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"products": [
            {"sku": "BOOK-RUST", "name": "The Rust Programming Language", "price_cents": 3999, "stock": 100000},
            {"sku": "KB-LTD", "name": "Limited edition keyboard", "price_cents": 14900, "stock": 3},
            {"sku": "MUG-CRAB", "name": "Ferris mug", "price_cents": 1250, "stock": 100000},
            {"sku": "STICKER", "name": "Sticker pack", "price_cents": 300, "stock": 100000},
            {"sku": "TSHIRT-L", "name": "T-shirt, size L", "price_cents": 2000, "stock": 100000},
        ]})
    );
    assert_eq!(
        shop.request("GET", "/healthz"),
        (200, json!({"status": "ok"}))
    );
}

#[test]
fn checkout_round_trip_prices_the_order_and_keeps_it() {
    let shop = Shop::start();
    let (status, _) = shop.request("POST", "/cart/alice/add?sku=BOOK-RUST&qty=2");
    assert_eq!(status, 200);
    let (status, cart) = shop.request("POST", "/cart/alice/add?sku=MUG-CRAB");
    assert_eq!(status, 200);
    let lines = json!([
        {"sku": "BOOK-RUST", "name": "The Rust Programming Language", "unit_price_cents": 3999, "qty": 2},
        {"sku": "MUG-CRAB", "name": "Ferris mug", "unit_price_cents": 1250, "qty": 1},
    ]);
    assert_eq!(
        cart,
        json!({"customer": "alice", "lines": lines, "item_count": 3, "total_cents": 9248})
    );
    assert_eq!(shop.request("GET", "/cart/alice"), (200, cart));

    let (status, order) = shop.request("POST", "/cart/alice/checkout?coupon=SAVE10&country=DE");
    let expected = json!({
        "id": 1,
        "customer": "alice",
        "tier": "gold",
        "lines": lines,
        "subtotal_cents": 9248,
        "discounts": [
            {"reason": "coupon SAVE10", "cents": 924},
            {"reason": "tier gold", "cents": 416},
        ],
        "discount_cents": 1340,
        "tax_cents": 1503,
        "total_cents": 9411,
        "country": "DE",
    });
    assert_eq!((status, order), (201, expected.clone()));
    assert_eq!(shop.request("GET", "/orders/1"), (200, expected));
    // The cart is empty after the order, and the stock went down.
    assert_eq!(shop.request("GET", "/cart/alice").1["item_count"], json!(0));
    let (_, products) = shop.request("GET", "/products");
    assert_eq!(products["products"][0]["stock"], json!(99998));
}

#[test]
fn failed_checkouts_say_why_and_keep_the_cart() {
    let shop = Shop::start();
    assert_eq!(
        shop.request("POST", "/cart/bob/checkout"),
        (400, json!({"error": "the cart is empty"}))
    );
    shop.request("POST", "/cart/bob/add?sku=KB-LTD&qty=4");
    assert_eq!(
        shop.request("POST", "/cart/bob/checkout?country=FR"),
        (
            409,
            json!({"error": "not enough KB-LTD in stock: 4 requested, 3 available"})
        )
    );
    shop.request("POST", "/cart/bob/remove?sku=KB-LTD&qty=2");
    assert_eq!(
        shop.request("POST", "/cart/bob/checkout?coupon=FREE&country=FR"),
        (400, json!({"error": "unknown coupon: FREE"}))
    );
    assert_eq!(
        shop.request("POST", "/cart/bob/checkout?country=XX"),
        (400, json!({"error": "we do not ship to country \"XX\""}))
    );
    assert_eq!(shop.request("GET", "/cart/bob").1["item_count"], json!(2));
    let (status, order) = shop.request("POST", "/cart/bob/checkout?coupon=fiveoff&country=fr");
    assert_eq!(status, 201);
    // 2 × 149.00 − 5.00 = 293.00, + 20% = 58.60 → 351.60.
    assert_eq!(order["total_cents"], json!(35160));
}

#[test]
fn bad_requests_get_json_errors() {
    let shop = Shop::start();
    assert_eq!(
        shop.request("POST", "/cart/bob/add?sku=NOPE"),
        (404, json!({"error": "unknown product: NOPE"}))
    );
    assert_eq!(
        shop.request("POST", "/cart/bob/add?sku=STICKER&qty=0"),
        (400, json!({"error": "qty must be 1 to 1000, not \"0\""}))
    );
    assert_eq!(
        shop.request("GET", "/orders/42"),
        (404, json!({"error": "no order 42"}))
    );
    assert_eq!(shop.request("DELETE", "/products").0, 405);
    assert_eq!(shop.request("GET", "/nothing").0, 404);
}
