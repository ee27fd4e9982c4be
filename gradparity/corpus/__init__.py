"""The known-bug corpora and the self-test that scores gradparity on them."""
