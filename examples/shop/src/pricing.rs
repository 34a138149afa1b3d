//! What a cart costs: coupons, the customer's tier, bulk discounts and tax by country.
//!
//! Discounts apply one after another, each to what is left after the ones before it (coupon, then tier,
//! then bulk), so together they never exceed the subtotal. Tax is charged on the discounted amount,
//! rounded half up to the cent.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::cart::Cart;

/// A price reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// This many percent off (values above 100 count as 100).
    Percent(u8),
    /// A fixed amount off, never more than what is left to pay.
    Fixed {
        /// The amount, in cents.
        cents: u64,
    },
}

/// A customer's standing with the shop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Tier {
    /// No standing discount.
    #[default]
    Basic,
    /// 5% off every order.
    Gold,
    /// A partner company's employee: 12% off every order.
    Partner(String),
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Basic => f.write_str("basic"),
            Tier::Gold => f.write_str("gold"),
            Tier::Partner(company) => write!(f, "partner:{company}"),
        }
    }
}

/// One discount as it was applied to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedDiscount {
    /// Why: `coupon SAVE10`, `tier gold`, `bulk`.
    pub reason: String,
    /// How much it took off, in cents.
    pub cents: u64,
}

/// The price of a cart for one customer in one country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Sum of the cart's lines, in cents.
    pub subtotal_cents: u64,
    /// The discounts applied, in order.
    pub discounts: Vec<AppliedDiscount>,
    /// Sum of the discounts, in cents.
    pub discount_cents: u64,
    /// Tax on the discounted amount, in cents.
    pub tax_cents: u64,
    /// What the customer pays, in cents: subtotal − discounts + tax.
    pub total_cents: u64,
    /// Country code the tax was computed for.
    pub country: String,
}

/// Why a cart could not be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingError {
    /// The coupon code is not known.
    UnknownCoupon(String),
    /// The shop does not ship to (or know the tax of) this country.
    UnsupportedCountry(String),
}

impl fmt::Display for PricingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PricingError::UnknownCoupon(code) => write!(f, "unknown coupon: {code}"),
            PricingError::UnsupportedCountry(country) => {
                write!(f, "we do not ship to country {country:?}")
            }
        }
    }
}

/// Units in one order from which the bulk discount applies.
pub const BULK_MIN_ITEMS: u32 = 10;

/// The shop's price rules: coupon codes and tax rates.
#[derive(Debug, Clone)]
pub struct Pricing {
    coupons: HashMap<String, Discount>,
    /// Tax rates in basis points (1900 = 19%), by ISO country code.
    tax_rates_bp: HashMap<String, u32>,
}

impl Pricing {
    /// The demo rules: coupons `SAVE10`, `FIVEOFF` and `VIP25`; tax for DE, FR, GB, NL, JP, CA and US.
    pub fn demo() -> Pricing {
        let coupons = [
            ("SAVE10", Discount::Percent(10)),
            ("FIVEOFF", Discount::Fixed { cents: 500 }),
            ("VIP25", Discount::Percent(25)),
        ];
        let tax_rates_bp = [
            ("DE", 1900),
            ("FR", 2000),
            ("GB", 2000),
            ("NL", 2100),
            ("JP", 1000),
            ("CA", 500),
            ("US", 0),
        ];
        Pricing {
            coupons: coupons
                .into_iter()
                .map(|(code, discount)| (code.to_string(), discount))
                .collect(),
            tax_rates_bp: tax_rates_bp
                .into_iter()
                .map(|(country, rate)| (country.to_string(), rate))
                .collect(),
        }
    }

    /// Prices `cart` for a customer of `tier` with an optional coupon, shipping to `country`.
    pub fn quote(
        &self,
        cart: &Cart,
        tier: &Tier,
        coupon: Option<&str>,
        country: &str,
    ) -> Result<Quote, PricingError> {
        let country = country.to_ascii_uppercase();
        let tax_rate_bp = *self
            .tax_rates_bp
            .get(&country)
            .ok_or_else(|| PricingError::UnsupportedCountry(country.clone()))?;

        let mut discounts: Vec<(String, Discount)> = Vec::new();
        if let Some(code) = coupon.filter(|code| !code.is_empty()) {
            let code = code.to_ascii_uppercase();
            let discount = *self
                .coupons
                .get(&code)
                .ok_or_else(|| PricingError::UnknownCoupon(code.clone()))?;
            discounts.push((format!("coupon {code}"), discount));
        }
        if let Some(discount) = tier_discount(tier) {
            discounts.push((format!("tier {tier}"), discount));
        }
        if let Some(discount) = bulk_discount(cart.item_count()) {
            discounts.push(("bulk".to_string(), discount));
        }

        let subtotal_cents = cart.total();
        let applied = apply_discounts(subtotal_cents, &discounts);
        let discount_cents: u64 = applied.iter().map(|d| d.cents).sum();
        let net_cents = subtotal_cents - discount_cents;
        let tax_cents = tax(net_cents, tax_rate_bp);
        Ok(Quote {
            subtotal_cents,
            discounts: applied,
            discount_cents,
            tax_cents,
            total_cents: net_cents + tax_cents,
            country,
        })
    }
}

/// The standing discount of a tier, if it has one.
pub fn tier_discount(tier: &Tier) -> Option<Discount> {
    match tier {
        Tier::Basic => None,
        Tier::Gold => Some(Discount::Percent(5)),
        Tier::Partner(_) => Some(Discount::Percent(12)),
    }
}

/// 7% off orders of at least [`BULK_MIN_ITEMS`] units.
pub fn bulk_discount(item_count: u32) -> Option<Discount> {
    (item_count >= BULK_MIN_ITEMS).then_some(Discount::Percent(7))
}

/// Applies `discounts` in order, each to the amount left after the ones before it.
///
/// Returns what each took off; the sum never exceeds `subtotal_cents`.
pub fn apply_discounts(
    subtotal_cents: u64,
    discounts: &[(String, Discount)],
) -> Vec<AppliedDiscount> {
    let mut remaining = subtotal_cents;
    let mut applied = Vec::with_capacity(discounts.len());
    for (reason, discount) in discounts {
        let cents = match *discount {
            Discount::Percent(percent) => remaining * u64::from(percent.min(100)) / 100,
            Discount::Fixed { cents } => cents.min(remaining),
        };
        remaining -= cents;
        // nonstop-demo: `nonstop demo` suggests the next line for a first rule (it has code in
        // optimized builds too, with `reason`, `discount`, `cents` and `applied` in scope).
        applied.push(AppliedDiscount {
            reason: reason.clone(),
            cents,
        });
    }
    applied
}

/// Tax on `net_cents` at `rate_bp` basis points, rounded half up to the cent.
pub fn tax(net_cents: u64, rate_bp: u32) -> u64 {
    (net_cents * u64::from(rate_bp) + 5_000) / 10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn cart(items: &[(&str, u32)]) -> Cart {
        let catalog = Catalog::demo();
        let mut cart = Cart::new("test");
        for (sku, qty) in items {
            let product = catalog.get(sku).expect("demo catalog has the sku");
            cart.add(product, *qty);
        }
        cart
    }

    fn reasons(quote: &Quote) -> Vec<(&str, u64)> {
        quote
            .discounts
            .iter()
            .map(|d| (d.reason.as_str(), d.cents))
            .collect()
    }

    #[test]
    fn gold_customer_with_a_coupon_in_germany() {
        // 2 × 39.99 + 12.50 = 92.48; SAVE10 takes 9.24 (floor), gold 5% of 83.24 takes 4.16;
        // 79.08 net, 19% tax = 15.0252 → 15.03; total 94.11.
        let cart = cart(&[("BOOK-RUST", 2), ("MUG-CRAB", 1)]);
        let quote = Pricing::demo()
            .quote(&cart, &Tier::Gold, Some("save10"), "de")
            .expect("priced");
        assert_eq!(quote.subtotal_cents, 9248);
        assert_eq!(
            reasons(&quote),
            [("coupon SAVE10", 924), ("tier gold", 416)]
        );
        assert_eq!(quote.discount_cents, 1340);
        assert_eq!(quote.tax_cents, 1503);
        assert_eq!(quote.total_cents, 9411);
        assert_eq!(quote.country, "DE");
    }

    #[test]
    fn basic_customer_without_coupon_in_the_us_pays_the_subtotal() {
        let cart = cart(&[("STICKER", 3)]);
        let quote = Pricing::demo()
            .quote(&cart, &Tier::Basic, None, "US")
            .expect("priced");
        assert_eq!(quote.subtotal_cents, 900);
        assert!(quote.discounts.is_empty());
        assert_eq!(quote.tax_cents, 0);
        assert_eq!(quote.total_cents, 900);
    }

    #[test]
    fn partner_bulk_order_stacks_tier_and_bulk() {
        // 10 × 3.00 = 30.00; partner 12% = 3.60; bulk 7% of 26.40 = 1.848 → 1.84; net 24.56;
        // JP 10% = 2.456 → 2.46; total 27.02.
        let cart = cart(&[("STICKER", 10)]);
        let quote = Pricing::demo()
            .quote(&cart, &Tier::Partner("acme".into()), Some(""), "JP")
            .expect("priced");
        assert_eq!(reasons(&quote), [("tier partner:acme", 360), ("bulk", 184)]);
        assert_eq!(quote.tax_cents, 246);
        assert_eq!(quote.total_cents, 2702);
    }

    #[test]
    fn a_fixed_coupon_never_takes_more_than_the_subtotal() {
        let cart = cart(&[("STICKER", 1)]);
        let quote = Pricing::demo()
            .quote(&cart, &Tier::Gold, Some("FIVEOFF"), "FR")
            .expect("priced");
        assert_eq!(reasons(&quote), [("coupon FIVEOFF", 300), ("tier gold", 0)]);
        assert_eq!(quote.total_cents, 0);
    }

    #[test]
    fn unknown_coupons_and_countries_are_errors() {
        let cart = cart(&[("STICKER", 1)]);
        let pricing = Pricing::demo();
        assert_eq!(
            pricing.quote(&cart, &Tier::Basic, Some("FREE"), "DE"),
            Err(PricingError::UnknownCoupon("FREE".into()))
        );
        assert_eq!(
            pricing.quote(&cart, &Tier::Basic, None, "XX"),
            Err(PricingError::UnsupportedCountry("XX".into()))
        );
    }

    #[test]
    fn percentages_above_100_count_as_100() {
        let applied = apply_discounts(
            1000,
            &[
                ("big".into(), Discount::Percent(150)),
                ("fixed".into(), Discount::Fixed { cents: 5 }),
            ],
        );
        assert_eq!(applied[0].cents, 1000);
        assert_eq!(applied[1].cents, 0);
    }

    #[test]
    fn tax_rounds_half_up() {
        assert_eq!(tax(50, 1000), 5);
        assert_eq!(tax(5, 1000), 1); // 0.5 → 1
        assert_eq!(tax(4, 1000), 0); // 0.4 → 0
        assert_eq!(tax(0, 2100), 0);
    }
}
