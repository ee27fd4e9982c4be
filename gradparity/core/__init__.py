"""The typed, torch-free core: tolerances, metrics, records, validation, rounding, escaping,
errors."""
