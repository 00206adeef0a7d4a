"""Demo models that ship with the product (like infinity's debug model)."""
