"""The parity suite: every ``gradparity.ours`` layer and loss against its torch mirror."""
