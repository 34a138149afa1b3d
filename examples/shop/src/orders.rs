//! Placing orders: check stock, price the cart, take the stock, record the order under a new id.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::cart::{Cart, CartLine};
use crate::catalog::{Catalog, StockError};
use crate::pricing::{Pricing, PricingError, Quote};

/// A placed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// The order's id, counting from 1.
    pub id: u64,
    /// Who placed it.
    pub customer: String,
    /// The customer's tier when the order was placed (`basic`, `gold`, `partner:NAME`).
    pub tier: String,
    /// What was bought.
    pub lines: Vec<CartLine>,
    /// What it cost.
    #[serde(flatten)]
    pub quote: Quote,
}

/// Why an order was not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// The cart has nothing in it.
    EmptyCart,
    /// A product ran out, or left the catalog.
    Stock(StockError),
    /// The cart could not be priced.
    Pricing(PricingError),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::EmptyCart => f.write_str("the cart is empty"),
            OrderError::Stock(StockError::UnknownSku(sku)) => write!(f, "unknown product: {sku}"),
            OrderError::Stock(StockError::OutOfStock {
                sku,
                requested,
                available,
            }) => write!(
                f,
                "not enough {sku} in stock: {requested} requested, {available} available"
            ),
            OrderError::Pricing(err) => err.fmt(f),
        }
    }
}

impl From<StockError> for OrderError {
    fn from(err: StockError) -> Self {
        OrderError::Stock(err)
    }
}

impl From<PricingError> for OrderError {
    fn from(err: PricingError) -> Self {
        OrderError::Pricing(err)
    }
}

/// All orders placed so far.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    next_id: u64,
    orders: HashMap<u64, Order>,
}

impl OrderBook {
    /// The order with this id.
    pub fn get(&self, id: u64) -> Option<&Order> {
        self.orders.get(&id)
    }

    /// Number of orders placed.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// True when no order was placed yet.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Places an order for everything in `cart`.
    ///
    /// Either all of it happens (stock taken, order recorded, cart emptied) or none of it.
    pub fn place_order(
        &mut self,
        catalog: &mut Catalog,
        pricing: &Pricing,
        cart: &mut Cart,
        coupon: Option<&str>,
        country: &str,
    ) -> Result<Order, OrderError> {
        if cart.is_empty() {
            return Err(OrderError::EmptyCart);
        }
        for line in &cart.lines {
            catalog.check_stock(&line.sku, line.qty)?;
        }
        let tier = catalog.tier_of(&cart.customer);
        let quote = pricing.quote(cart, &tier, coupon, country)?;
        for line in &cart.lines {
            // Checked above and nothing ran in between, so this cannot fail half-way.
            catalog.take_stock(&line.sku, line.qty)?;
        }
        self.next_id += 1;
        let order = Order {
            id: self.next_id,
            customer: cart.customer.clone(),
            tier: tier.to_string(),
            lines: std::mem::take(&mut cart.lines),
            quote,
        };
        self.orders.insert(order.id, order.clone());
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(customer: &str, items: &[(&str, u32)]) -> (Catalog, Cart) {
        let catalog = Catalog::demo();
        let mut cart = Cart::new(customer);
        for (sku, qty) in items {
            cart.add(catalog.get(sku).expect("demo sku"), *qty);
        }
        (catalog, cart)
    }

    #[test]
    fn placing_an_order_takes_stock_and_empties_the_cart() {
        let (mut catalog, mut cart) = setup("alice", &[("KB-LTD", 2)]);
        let mut book = OrderBook::default();
        let order = book
            .place_order(&mut catalog, &Pricing::demo(), &mut cart, None, "US")
            .expect("placed");
        assert_eq!(order.id, 1);
        assert_eq!(order.tier, "gold");
        // 2 × 149.00 = 298.00, gold 5% = 14.90.
        assert_eq!(order.quote.total_cents, 29800 - 1490);
        assert!(cart.is_empty());
        assert_eq!(catalog.get("KB-LTD").map(|p| p.stock), Some(1));
        assert_eq!(book.get(1), Some(&order));
    }

    #[test]
    fn a_failed_order_changes_nothing() {
        let (mut catalog, mut cart) = setup("bob", &[("STICKER", 1), ("KB-LTD", 4)]);
        let mut book = OrderBook::default();
        let err = book
            .place_order(&mut catalog, &Pricing::demo(), &mut cart, None, "DE")
            .expect_err("not enough keyboards");
        assert_eq!(
            err.to_string(),
            "not enough KB-LTD in stock: 4 requested, 3 available"
        );
        let err = book
            .place_order(
                &mut catalog,
                &Pricing::demo(),
                &mut cart,
                Some("NOPE"),
                "DE",
            )
            .expect_err("bad coupon");
        assert_eq!(
            err,
            OrderError::Stock(StockError::OutOfStock {
                sku: "KB-LTD".into(),
                requested: 4,
                available: 3
            })
        );
        cart.remove("KB-LTD", 4);
        let err = book
            .place_order(
                &mut catalog,
                &Pricing::demo(),
                &mut cart,
                Some("NOPE"),
                "DE",
            )
            .expect_err("bad coupon");
        assert_eq!(err.to_string(), "unknown coupon: NOPE");
        assert_eq!(cart.item_count(), 1);
        assert_eq!(catalog.get("STICKER").map(|p| p.stock), Some(100_000));
        assert!(book.is_empty());
    }

    #[test]
    fn an_empty_cart_cannot_be_ordered() {
        let (mut catalog, mut cart) = setup("bob", &[]);
        let mut book = OrderBook::default();
        assert_eq!(
            book.place_order(&mut catalog, &Pricing::demo(), &mut cart, None, "DE"),
            Err(OrderError::EmptyCart)
        );
    }
}
