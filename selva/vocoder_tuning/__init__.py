"""Fine-tuning a BigVGAN vocoder toward a target timbre (SelvaBigvganTrainer / SelvaBigvganLoader)."""
