"""File formats in and out: volumes (CT), frames (ultrasound), checkpoints, atomic writes."""
