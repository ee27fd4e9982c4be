"""Naming the likely bug behind one diverging pair of tensors."""
