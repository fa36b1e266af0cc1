"""oe_text."""
