"""Statuses and root causes: where ours and the reference part."""
