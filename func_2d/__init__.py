"""2D (slice) training step and volume evaluation."""
