"""headwater: a product-analytics data platform."""
