//! The generated catalog: categories, brands with heavy-tailed popularity, products with stable
//! prices. Sampling a product for an event picks a brand by its event share first (so brand shares
//! match December 2019 at any scale), then a product of that brand by a Zipf law.

use rand::RngExt;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, LogNormal, Zipf};

use super::names::{tail_brand, CATEGORY_CODES, TOP_BRANDS};
use super::Calibration as C;

pub struct Category {
    pub id: u64,
    pub code: Option<&'static str>,
}

pub struct Product {
    pub id: u64,
    pub category: u32,
    /// Index into `Catalog::brands`; `None` for products without a brand.
    pub brand: Option<u32>,
    pub base_price: i64,
}

pub struct Catalog {
    pub categories: Vec<Category>,
    pub brands: Vec<String>,
    pub products: Vec<Product>,
    /// Brand choice per event; the last index is "no brand".
    brand_pick: WeightedAliasIndex<f64>,
    /// Product indices per brand (and, last, the products without a brand), most popular first.
    brand_products: Vec<Vec<u32>>,
    brand_zipf: Vec<Zipf<f64>>,
}

impl Catalog {
    pub fn new(products: u64, rng: &mut impl rand::Rng) -> Catalog {
        let categories: Vec<Category> = (0..C::CATEGORIES)
            .map(|i| Category {
                id: 2_053_013_552_000_000_000 + (i as u64) * 1_000_003_337 + rng.random_range(0..1_000_000),
                code: (!rng.random_bool(C::CATEGORIES_WITHOUT_CODE))
                    .then(|| CATEGORY_CODES[rng.random_range(0..CATEGORY_CODES.len())]),
            })
            .collect();
        let coded: Vec<u32> = (0..categories.len() as u32).filter(|&i| categories[i as usize].code.is_some()).collect();
        let uncoded: Vec<u32> =
            (0..categories.len() as u32).filter(|&i| categories[i as usize].code.is_none()).collect();

        // Brand event shares: the three leaders as in December 2019, then a power-law tail.
        let products = products.max(8);
        let unbranded_products = ((products as f64 * C::UNBRANDED_PRODUCT_SHARE) as u64).max(1);
        let branded_products = products - unbranded_products;
        let brand_count = (branded_products as usize / 3).clamp(3, C::BRANDS);
        let brands: Vec<String> = (0..brand_count)
            .map(|i| TOP_BRANDS.get(i).map_or_else(|| tail_brand(i - TOP_BRANDS.len()), |s| s.to_string()))
            .collect();
        let mut weights: Vec<f64> = C::LEADER_SHARES.to_vec();
        let tail: Vec<f64> = (3..brand_count).map(|r| ((r + 1) as f64).powf(-C::BRAND_TAIL_EXPONENT)).collect();
        let tail_sum: f64 = tail.iter().sum();
        let tail_share = 1.0 - C::EMPTY_BRAND_SHARE - C::LEADER_SHARES.iter().sum::<f64>();
        weights.extend(tail.iter().map(|w| w / tail_sum * tail_share));
        weights.truncate(brand_count);
        weights.push(C::EMPTY_BRAND_SHARE);

        // Products per brand grow sub-linearly with the brand's share; every brand has one.
        let raw: Vec<f64> = weights[..brand_count].iter().map(|w| w.powf(0.6)).collect();
        let raw_sum: f64 = raw.iter().sum();
        let spare = branded_products.saturating_sub(brand_count as u64) as f64;
        let mut counts: Vec<u64> = raw.iter().map(|r| 1 + (r / raw_sum * spare) as u64).collect();
        counts.push(unbranded_products + branded_products.saturating_sub(counts.iter().sum()));

        let price_of_category: Vec<f64> = {
            let scale = LogNormal::new(C::MEDIAN_PRICE.ln(), 0.9).expect("valid lognormal");
            (0..categories.len()).map(|_| scale.sample(rng)).collect()
        };
        let spread = LogNormal::new(0.0, 0.5).expect("valid lognormal");
        let mut all = Vec::with_capacity(products as usize);
        let mut brand_products = Vec::with_capacity(counts.len());
        for (brand, &count) in counts.iter().enumerate() {
            let brand = (brand < brand_count).then_some(brand as u32);
            // A brand keeps to a home category most of the time.
            let home = coded[rng.random_range(0..coded.len())];
            let mut members = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let category = if rng.random_bool(0.7) { home } else { coded[rng.random_range(0..coded.len())] };
                let base_price = if rng.random_bool(C::ZERO_PRICE_PRODUCTS) {
                    0
                } else {
                    let price = price_of_category[category as usize] * spread.sample(rng);
                    ((price * 100.0) as i64).clamp(77, C::MAX_PRICE_CENTS)
                };
                let index = all.len() as u32;
                // A bijection of the index onto 8-digit ids: unique and not sequential.
                let id = 1_000_000 + (u64::from(index) * 7_919) % 99_000_000;
                all.push(Product { id, category, brand, base_price });
                members.push(index);
            }
            brand_products.push(members);
        }
        let brand_zipf: Vec<Zipf<f64>> = brand_products
            .iter()
            .map(|m| Zipf::new(m.len() as f64, C::PRODUCT_ZIPF_EXPONENT).expect("valid zipf"))
            .collect();

        // Move products into code-less categories, in random order, until their expected share of
        // events reaches the calibrated share: exact in expectation however heavy the head is.
        if !uncoded.is_empty() {
            let mut expected: Vec<(u32, f64)> = Vec::with_capacity(all.len());
            for (members, weight) in brand_products.iter().zip(&weights) {
                let normaliser: f64 = (1..=members.len()).map(|k| (k as f64).powf(-C::PRODUCT_ZIPF_EXPONENT)).sum();
                for (rank, &product) in members.iter().enumerate() {
                    let share = weight * ((rank + 1) as f64).powf(-C::PRODUCT_ZIPF_EXPONENT) / normaliser;
                    expected.push((product, share));
                }
            }
            for i in (1..expected.len()).rev() {
                expected.swap(i, rng.random_range(0..=i));
            }
            let mut share = 0.0;
            for (product, expected_share) in expected {
                if share + expected_share / 2.0 > C::EMPTY_CODE_SHARE {
                    continue;
                }
                share += expected_share;
                all[product as usize].category = uncoded[rng.random_range(0..uncoded.len())];
            }
        }
        Catalog {
            categories,
            brands,
            products: all,
            brand_pick: WeightedAliasIndex::new(weights).expect("valid brand weights"),
            brand_products,
            brand_zipf,
        }
    }

    /// A product for a new view, by brand share then popularity within the brand.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u32 {
        let brand = self.brand_pick.sample(rng);
        let rank = self.brand_zipf[brand].sample(rng) as usize - 1;
        self.brand_products[brand][rank]
    }
}
