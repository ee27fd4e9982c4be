"""The front ends: compare, compare_function and compare_training."""
