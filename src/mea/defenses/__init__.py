"""Defenses: an OOD query detector, response policies, and the defended oracle that combines them."""
