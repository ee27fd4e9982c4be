"""The gradparity command line."""
