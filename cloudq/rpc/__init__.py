"""The RPC boundary: JSON over bounded, authenticated RPyC."""
