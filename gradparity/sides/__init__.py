"""Running each side (NumPy code, torch reference) and capturing what it produced."""
