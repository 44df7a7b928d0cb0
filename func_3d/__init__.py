"""3D (slice-sequence) training step and volume evaluation."""
