"""Pairing layers, parameters and taps of ours with the reference's."""
