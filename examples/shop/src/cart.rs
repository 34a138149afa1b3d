//! A customer's cart: lines of products with quantities, priced at the time they were added.

use serde::Serialize;

use crate::catalog::Product;

/// One product in a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartLine {
    /// The product's sku.
    pub sku: String,
    /// The product's name.
    pub name: String,
    /// Price of one unit when it was added, in cents.
    pub unit_price_cents: u64,
    /// Units in the cart.
    pub qty: u32,
}

impl CartLine {
    /// The line's price before discounts: unit price × quantity.
    pub fn total_cents(&self) -> u64 {
        self.unit_price_cents * u64::from(self.qty)
    }
}

/// A customer's cart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart {
    /// The customer the cart belongs to.
    pub customer: String,
    /// Lines in the order they were first added; one line per sku.
    pub lines: Vec<CartLine>,
}

impl Cart {
    /// An empty cart for `customer`.
    pub fn new(customer: &str) -> Cart {
        Cart {
            customer: customer.to_string(),
            lines: Vec::new(),
        }
    }

    /// Adds `qty` units of `product`, merging with a line of the same sku.
    pub fn add(&mut self, product: &Product, qty: u32) {
        match self.lines.iter_mut().find(|line| line.sku == product.sku) {
            Some(line) => line.qty = line.qty.saturating_add(qty),
            None => self.lines.push(CartLine {
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_price_cents: product.price_cents,
                qty,
            }),
        }
    }

    /// Removes up to `qty` units of `sku`; a line that reaches zero goes away. Returns the units removed.
    pub fn remove(&mut self, sku: &str, qty: u32) -> u32 {
        let Some(index) = self.lines.iter().position(|line| line.sku == sku) else {
            return 0;
        };
        let line = &mut self.lines[index];
        let removed = qty.min(line.qty);
        line.qty -= removed;
        if line.qty == 0 {
            self.lines.remove(index);
        }
        removed
    }

    /// Sum of the lines' prices, in cents, before discounts and tax.
    pub fn total(&self) -> u64 {
        self.lines.iter().map(CartLine::total_cents).sum()
    }

    /// Number of units over all lines.
    pub fn item_count(&self) -> u32 {
        self.lines.iter().map(|line| line.qty).sum()
    }

    /// True when the cart has no lines.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, price_cents: u64) -> Product {
        Product {
            sku: sku.to_string(),
            name: format!("{sku} name"),
            price_cents,
            stock: 10,
        }
    }

    #[test]
    fn adding_the_same_sku_twice_merges_the_line() {
        let mut cart = Cart::new("bob");
        cart.add(&product("A", 1250), 2);
        cart.add(&product("B", 300), 1);
        cart.add(&product("A", 1250), 3);
        assert_eq!(cart.lines.len(), 2);
        assert_eq!(cart.lines[0].qty, 5);
        assert_eq!(cart.total(), 5 * 1250 + 300);
        assert_eq!(cart.total(), 6550);
        assert_eq!(cart.item_count(), 6);
    }

    #[test]
    fn removing_all_units_drops_the_line() {
        let mut cart = Cart::new("bob");
        cart.add(&product("A", 1250), 2);
        cart.add(&product("B", 300), 4);
        assert_eq!(cart.remove("B", 1), 1);
        assert_eq!(cart.total(), 2500 + 900);
        assert_eq!(cart.remove("A", 5), 2);
        assert_eq!(cart.remove("missing", 1), 0);
        assert_eq!(cart.lines.len(), 1);
        assert_eq!(cart.total(), 900);
    }

    #[test]
    fn an_empty_cart_costs_nothing() {
        let cart = Cart::new("bob");
        assert!(cart.is_empty());
        assert_eq!(cart.total(), 0);
    }
}
