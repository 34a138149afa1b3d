//! The products the shop sells (prices in cents, stock on hand) and the customers it knows.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::pricing::Tier;

/// One product for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Stock-keeping unit: the product's id in URLs and carts.
    pub sku: String,
    /// Name shown to customers.
    pub name: String,
    /// Price of one unit, in cents, before discounts and tax.
    pub price_cents: u64,
    /// Units on hand.
    pub stock: u32,
}

/// Why the catalog refused a stock change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockError {
    /// No product has this sku.
    UnknownSku(String),
    /// Fewer units on hand than asked for.
    OutOfStock {
        /// The product.
        sku: String,
        /// Units asked for.
        requested: u32,
        /// Units on hand.
        available: u32,
    },
}

/// All products, by sku, and the tiers of known customers.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    products: BTreeMap<String, Product>,
    tiers: HashMap<String, Tier>,
}

impl Catalog {
    /// The demo catalog: a few products with plenty of stock, one limited edition, and three known customers.
    pub fn demo() -> Catalog {
        let mut catalog = Catalog::default();
        for (sku, name, price_cents, stock) in [
            ("BOOK-RUST", "The Rust Programming Language", 3999, 100_000),
            ("MUG-CRAB", "Ferris mug", 1250, 100_000),
            ("TSHIRT-L", "T-shirt, size L", 2000, 100_000),
            ("STICKER", "Sticker pack", 300, 100_000),
            ("KB-LTD", "Limited edition keyboard", 14900, 3),
        ] {
            catalog.insert(Product {
                sku: sku.to_string(),
                name: name.to_string(),
                price_cents,
                stock,
            });
        }
        catalog.tiers.insert("alice".to_string(), Tier::Gold);
        catalog
            .tiers
            .insert("carol".to_string(), Tier::Partner("acme".to_string()));
        catalog.tiers.insert("dave".to_string(), Tier::Gold);
        catalog
    }

    /// Adds a product, replacing one with the same sku.
    pub fn insert(&mut self, product: Product) {
        self.products.insert(product.sku.clone(), product);
    }

    /// The product with this sku.
    pub fn get(&self, sku: &str) -> Option<&Product> {
        self.products.get(sku)
    }

    /// All products, ordered by sku.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// The customer's tier; unknown customers are `Basic`.
    pub fn tier_of(&self, customer: &str) -> Tier {
        self.tiers.get(customer).cloned().unwrap_or(Tier::Basic)
    }

    /// Sets a customer's tier.
    pub fn set_tier(&mut self, customer: &str, tier: Tier) {
        self.tiers.insert(customer.to_string(), tier);
    }

    /// Checks that `qty` units of `sku` are on hand.
    pub fn check_stock(&self, sku: &str, qty: u32) -> Result<(), StockError> {
        let product = self
            .products
            .get(sku)
            .ok_or_else(|| StockError::UnknownSku(sku.to_string()))?;
        if product.stock < qty {
            return Err(StockError::OutOfStock {
                sku: sku.to_string(),
                requested: qty,
                available: product.stock,
            });
        }
        Ok(())
    }

    /// Takes `qty` units of `sku` out of stock, or changes nothing and says why not.
    pub fn take_stock(&mut self, sku: &str, qty: u32) -> Result<(), StockError> {
        self.check_stock(sku, qty)?;
        if let Some(product) = self.products.get_mut(sku) {
            product.stock -= qty;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_customers_are_basic() {
        let catalog = Catalog::demo();
        assert_eq!(catalog.tier_of("alice"), Tier::Gold);
        assert_eq!(catalog.tier_of("carol"), Tier::Partner("acme".to_string()));
        assert_eq!(catalog.tier_of("zed"), Tier::Basic);
    }

    #[test]
    fn taking_more_than_the_stock_changes_nothing() {
        let mut catalog = Catalog::demo();
        assert_eq!(catalog.take_stock("KB-LTD", 2), Ok(()));
        assert_eq!(
            catalog.take_stock("KB-LTD", 2),
            Err(StockError::OutOfStock {
                sku: "KB-LTD".to_string(),
                requested: 2,
                available: 1
            })
        );
        assert_eq!(catalog.get("KB-LTD").map(|p| p.stock), Some(1));
        assert_eq!(
            catalog.take_stock("NOPE", 1),
            Err(StockError::UnknownSku("NOPE".to_string()))
        );
    }
}
