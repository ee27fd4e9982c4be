"""Comparing paired tensors into rows, and diagnosing each diverging pair."""
