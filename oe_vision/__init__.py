"""oe_vision."""
