"""Training: the paper's recipes for Attention U-Net (CT) and AG-Sononet (ultrasound planes), resumable and DDP-ready."""
