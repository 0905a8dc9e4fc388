"""Inner ring: the joint emotion + intent network and its losses (torch only)."""
