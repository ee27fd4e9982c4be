"""The typed, torch-free core: addresses of compared tensors, statuses, rows, findings, the
diagnosis labels, tolerances (with the one mismatch rule), metrics, records, validation,
rounding, escaping, errors."""
